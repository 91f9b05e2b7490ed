"""HTTP load against a local Ray Serve app vs in-process ONNX Runtime on the same model.

    .venv/bin/python benchmarks/serve_load.py [--model models/onnx/weld_classifier.onnx] [--requests 256]
        [--rounds 3] [serve.key=value ...]          (serve.ingress=proxy: Serve's Python proxy instead of HAProxy)

Without --model, a random-weight efficientnet_lite0@224 is exported to a temp folder. Requests are
real weld photos (JPEG 640x640) when available. Reports p50/p95/p99 and throughput at concurrency
1, 8 and 16 against in-process latency (batch 1, decode included) and batched throughput (batch 16), and
a breakdown of one request at concurrency 1, stage by stage, from the replica's ``Server-Timing`` header
beside the same stages timed in process; what the client waits beyond the handler is the HTTP server and
the ingress hop.

The in-process and HTTP measurements alternate, round after round, so both see the same machine
load (on a shared machine the load changes by the minute); the comparison columns are the median
over rounds of the per-round figures, and "best" their most favourable round.
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


def _server_timing(header: str) -> dict[str, float]:
    """``stage;dur=ms, ...`` -> {stage: ms} (entries without a duration are skipped)."""
    out = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        for p in params:
            if p.startswith("dur="):
                out[name] = float(p[4:])
    return out


async def _floor(url: str, total: int) -> list[float]:
    """Latencies (ms) of ``GET /healthz`` one at a time: the client, the ingress, the HTTP server and Serve with no
    work at all, i.e. what any request pays for being HTTP through Serve."""
    import httpx

    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await client.get("/healthz")
        for _ in range(total):
            t0 = time.perf_counter()
            await client.get("/healthz")
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def _load(
    url: str, payloads: list[bytes], concurrency: int, total: int, stages: list[dict[str, float]] | None = None
) -> tuple[np.ndarray, float, int]:
    """Latencies (ms), throughput and error count of ``total`` requests; with ``stages``, each answer's
    Server-Timing stages plus the client's own latency (``client``) are appended to it."""
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
            if stages is not None and "server-timing" in r.headers:
                stages.append({**_server_timing(r.headers["server-timing"]), "client": latencies[-1]})

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.post("/predict", content=payloads[0])  # warm
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return np.array(latencies), total / wall, errors


def _in_process(
    clf, payloads: list[bytes], total: int, stages: list[dict[str, float]]
) -> tuple[np.ndarray, float]:
    """Sequential decode + resize + infer latencies (ms) for ``total`` requests (each step's time appended to
    ``stages``), and batch-16 throughput."""
    from weldray.preprocessing import decode_image, resize_for_model

    single = []
    for i in range(total):
        t0 = time.perf_counter()
        image = decode_image(payloads[i % len(payloads)])
        t1 = time.perf_counter()
        x = resize_for_model(image, clf.input_size)[None]
        t2 = time.perf_counter()
        clf.result(clf.probabilities(x)[0])
        t3 = time.perf_counter()
        single.append((t3 - t0) * 1000)
        stages.append({"decode": (t1 - t0) * 1000, "resize": (t2 - t1) * 1000, "infer": (t3 - t2) * 1000})
    t0 = time.perf_counter()
    for i in range(0, total, 16):
        clf.predict_batch([payloads[j % len(payloads)] for j in range(i, min(i + 16, total))])
    return np.array(single), total / (time.perf_counter() - t0)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=256, help="requests per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="serve.* overrides for the Serve app")
    args = parser.parse_args()
    payloads = _payloads(32)
    levels = (1, 8, 16)
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _model(Path(tmp))
        import ray
        from ray import serve

        from weldray.config import RayConfig, load_config
        from weldray.inference import WeldClassifierInference
        from weldray.inference.serving import build_application
        from weldray.ray_utils import init_ray

        clf = WeldClassifierInference(model, providers="cpu", intra_op_threads=args.threads)
        for p in payloads[:3]:
            clf.predict(p)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = load_config(
            [f"serve.intra_op_threads={args.threads}", "serve.min_replicas=1", "serve.max_replicas=1", *args.overrides]
        ).serve
        init_ray(RayConfig(num_cpus=2), serve=cfg)
        single: list[np.ndarray] = []
        batched: list[float] = []
        local_stages: list[dict[str, float]] = []
        http_stages: list[dict[str, float]] = []
        floor: list[float] = []
        http: dict[int, list[tuple[np.ndarray, float, int]]] = {c: [] for c in levels}
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_application(model, cfg), name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            for _ in range(args.rounds):
                loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
                lat, thr = _in_process(clf, payloads, args.requests, local_stages)
                single.append(lat)
                batched.append(thr)
                for c in levels:
                    http[c].append(asyncio.run(_load(url, payloads, c, args.requests, http_stages if c == 1 else None)))
                floor += asyncio.run(_floor(url, args.requests))
        finally:
            serve.shutdown()
            ray.shutdown()
    table = Table(
        title=f"HTTP /predict ({cfg.ingress} ingress) vs in-process ORT ({args.threads} threads, "
        f"{args.requests} requests per level, "
        f"{args.rounds} rounds, load avg {min(loads):.1f}-{max(loads):.1f})"
    )
    for col in ("setup", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", "vs in-process (median / best round)"):
        table.add_column(col)
    p50_single = [float(np.median(x)) for x in single]
    every = np.concatenate(single)
    table.add_row(
        "in-process b1 (decode+infer)",
        f"{np.median(p50_single):.1f}",
        f"{np.percentile(every, 95):.1f}",
        f"{np.percentile(every, 99):.1f}",
        f"{1000 / np.mean(every):.1f}",
        "0",
        "",
    )
    table.add_row("in-process batched b16", "", "", "", f"{np.median(batched):.1f}", "0", "")
    for c in levels:
        lat = np.concatenate([r[0] for r in http[c]])
        thr = [r[1] for r in http[c]]
        if c == 1:
            over = [float(np.median(r[0])) - p for r, p in zip(http[c], p50_single, strict=True)]
            note = f"p50 {np.median(over):+.1f} / {min(over):+.1f} ms"
        else:
            ratio = [t / b for t, b in zip(thr, batched, strict=True)]
            note = f"{np.median(ratio):.0%} / {max(ratio):.0%} of batched"
        table.add_row(
            f"HTTP concurrency {c}",
            f"{np.median([np.median(r[0]) for r in http[c]]):.1f}",
            f"{np.percentile(lat, 95):.1f}",
            f"{np.percentile(lat, 99):.1f}",
            f"{np.median(thr):.1f}",
            str(sum(r[2] for r in http[c])),
            note,
        )
    console = Console(width=200)
    console.print(table)
    console.print(_breakdown(local_stages, http_stages, floor))


def _breakdown(local: list[dict[str, float]], http: list[dict[str, float]], floor: list[float]):
    """Median ms per stage of one request at concurrency 1: in process vs inside the replica vs the client."""
    from rich.table import Table

    from weldray.inference.serving import TIMING_STAGES

    def med(rows: list[dict[str, float]], key: str) -> float | None:
        values = [r[key] for r in rows if key in r]
        return float(np.median(values)) if values else None

    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}"

    notes = {
        "read": "body received by the handler (+ multipart parse)",
        "wait": "Serve batch queue + hand-off to the inference thread",
        "encode": "JSON answer rendered",
        "app": "the whole handler",
    }
    table = Table(title=f"One /predict request at concurrency 1, median ms ({len(http)} requests)")
    for col in ("stage", "in process", "HTTP request", "difference", "what"):
        table.add_column(col)
    for stage in TIMING_STAGES:
        a, b = med(local, stage), med(http, stage)
        diff = f"{b - (a or 0):+.2f}" if b is not None else ""
        table.add_row(stage, cell(a), cell(b), diff, notes.get(stage, ""))
    outside = [r["client"] - r["app"] for r in http if "app" in r]
    total_local = float(np.median([sum(r.values()) for r in local])) if local else None
    table.add_row("outside the handler", "", cell(float(np.median(outside)) if outside else None), "",
                  "HTTP server, ingress hop, client")
    table.add_row("  of which any request", "", cell(float(np.median(floor)) if floor else None), "",
                  "GET /healthz: the same path with no work (client, ingress, HTTP server, Serve)")
    client = med(http, "client")
    table.add_row("total", cell(total_local), cell(client),
                  f"{client - total_local:+.2f}" if client is not None and total_local else "", "")
    return table


if __name__ == "__main__":
    main()
