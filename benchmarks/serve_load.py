"""HTTP load against a local Ray Serve app vs in-process ONNX Runtime on the same model.

    .venv/bin/python benchmarks/serve_load.py [--model models/onnx/weld_classifier.onnx] [--requests 64]

Without --model, a random-weight efficientnet_lite0@224 is exported to a temp folder. Requests are
real weld photos (JPEG 640x640) when available. Reports p50/p95/p99 and throughput at concurrency
1, 8 and 16 against in-process latency (batch 1, decode included) and batched throughput (batch 16).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "welds"


def _payloads(n: int) -> list[bytes]:
    files = sorted(REAL.glob("*/*.jpg"))[:n]
    if files:
        return [f.read_bytes() for f in files]
    import io

    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (640, 640, 3), dtype=np.uint8)).save(
            buf, "JPEG"
        )
        out.append(buf.getvalue())
    return out


def _model(tmp: Path) -> Path:
    import torch

    from weldray.config import ModelConfig
    from weldray.export.onnx_export import export_onnx
    from weldray.inference import ModelSidecar, write_sidecar
    from weldray.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier(ModelConfig(pretrained=False, image_size=224), 2, pretrained=False).eval()
    path = export_onnx(model, tmp / "m.onnx", 224)
    write_sidecar(
        path, ModelSidecar(classes=["good_weld", "bad_weld"], input_size=224, backbone="efficientnet_lite0")
    )
    return path


async def _load(
    url: str, payloads: list[bytes], concurrency: int, total: int
) -> tuple[np.ndarray, float, int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = list(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            r = await client.post("/predict", content=payloads[i % len(payloads)])
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.post("/predict", content=payloads[0])  # warm
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return np.array(latencies), total / wall, errors


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    payloads = _payloads(32)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _model(Path(tmp))
        from weldray.inference import WeldClassifierInference

        clf = WeldClassifierInference(model, providers="cpu", intra_op_threads=args.threads)
        for p in payloads[:3]:
            clf.predict(p)
        single = []
        for p in payloads:
            t0 = time.perf_counter()
            clf.predict(p)
            single.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        for i in range(0, len(payloads), 16):
            clf.predict_batch(payloads[i : i + 16])
        batched = len(payloads) / (time.perf_counter() - t0)
        del clf

        import ray
        from ray import serve

        from weldray.config import RayConfig, load_config
        from weldray.inference.serving import build_application
        from weldray.ray_utils import init_ray

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = load_config([f"serve.intra_op_threads={args.threads}", "serve.max_replicas=1"]).serve
        init_ray(RayConfig(num_cpus=2))
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_application(model, cfg), name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            results = {c: asyncio.run(_load(url, payloads, c, args.requests)) for c in (1, 8, 16)}
        finally:
            serve.shutdown()
            ray.shutdown()
    p50_single = float(np.median(single))
    table = Table(
        title=f"HTTP /predict vs in-process ORT ({args.threads} threads, {args.requests} requests per level, "
        f"load avg {Path('/proc/loadavg').read_text().split()[0]})"
    )
    for col in ("setup", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", "vs in-process"):
        table.add_column(col)
    table.add_row(
        "in-process b1 (decode+infer)",
        f"{p50_single:.1f}",
        f"{np.percentile(single, 95):.1f}",
        f"{np.percentile(single, 99):.1f}",
        f"{1000 / np.mean(single):.1f}",
        "0",
        "",
    )
    table.add_row("in-process batched b16", "", "", "", f"{batched:.1f}", "0", "")
    for c, (lat, thr, errors) in results.items():
        note = f"p50 +{np.median(lat) - p50_single:.1f} ms" if c == 1 else f"{thr / batched:.0%} of batched"
        table.add_row(
            f"HTTP concurrency {c}",
            f"{np.median(lat):.1f}",
            f"{np.percentile(lat, 95):.1f}",
            f"{np.percentile(lat, 99):.1f}",
            f"{thr:.1f}",
            str(errors),
            note,
        )
    Console().print(table)


if __name__ == "__main__":
    main()
