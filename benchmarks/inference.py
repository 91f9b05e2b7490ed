"""Batch-1 latency and batch-16 throughput: PyTorch eager vs ONNX Runtime fp32 vs static INT8.

    .venv/bin/python benchmarks/inference.py [--checkpoint RUN_DIR] [--threads 2] [--runs 10]

Without --checkpoint the backbones run with random weights (fine for speed; agreement figures then
compare near-tied probabilities and understate INT8 quality: pass a trained run for those).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "welds"
CASES = [("efficientnet_lite0", 224), ("convnextv2_nano", 448)]


def _time(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _inputs(size: int, n: int) -> np.ndarray:
    from weldray.export.parity import load_inputs

    files = sorted(REAL.glob("*/*.jpg"))
    if files:
        return load_inputs([str(f) for f in files[:: max(1, len(files) // n)][:n]], size)[0]
    return np.random.default_rng(0).uniform(0, 255, (n, 3, size, size)).astype(np.float32)


def bench(model, size: int, threads: int, runs: int, label: str) -> list[dict]:
    import torch

    from weldray.export.onnx_export import export_onnx
    from weldray.export.parity import compare, session_probabilities
    from weldray.export.quantize import quantize_int8
    from weldray.inference import create_session

    torch.set_num_threads(threads)
    x16 = _inputs(size, 16)
    x1 = x16[:1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx(model, Path(tmp) / "m.onnx", size)
        int8_path = quantize_int8(fp32_path, Path(tmp) / "m.int8.onnx", _inputs(size, 32))
        fp32 = create_session(str(fp32_path), "CPUExecutionProvider", intra_op_threads=threads)
        int8 = create_session(str(int8_path), "CPUExecutionProvider", intra_op_threads=threads)
        p32 = session_probabilities(fp32, x16, 1.0)
        agree = compare(p32, session_probabilities(int8, x16, 1.0))
        with torch.no_grad():
            t1, t16 = torch.from_numpy(x1), torch.from_numpy(x16)
            eager = (_time(lambda: model(t1), runs), _time(lambda: model(t16), max(2, runs // 3)))
        for name, sess, path in (("ort fp32", fp32, fp32_path), ("ort int8", int8, int8_path)):
            run1 = _time(lambda s=sess: s.run(None, {"input": x1}), runs)
            run16 = _time(lambda s=sess: s.run(None, {"input": x16}), max(2, runs // 3))
            rows.append(
                {
                    "model": label,
                    "runtime": name,
                    "b1_ms": run1 * 1000,
                    "b16_img_s": 16 / run16,
                    "size_mb": path.stat().st_size / 1e6,
                    "vs_eager_latency": run1 / eager[0],
                    "int8_agreement": agree.argmax_agreement if name == "ort int8" else None,
                }
            )
        rows.insert(
            0,
            {
                "model": label,
                "runtime": "torch eager",
                "b1_ms": eager[0] * 1000,
                "b16_img_s": 16 / eager[1],
                "size_mb": None,
                "vs_eager_latency": 1.0,
                "int8_agreement": None,
            },
        )
    return rows


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from weldray.config import ModelConfig
    from weldray.models import build_classifier, load_checkpoint

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", help="a trained run dir / model.pt instead of random-weight backbones"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cases", nargs="+", default=[f"{b}@{s}" for b, s in CASES],
                        help="backbone@size entries (default: the cpu and production profiles)")
    args = parser.parse_args()
    rows = []
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        rows += bench(
            model, meta.image_size, args.threads, args.runs, f"{meta.model['backbone']}@{meta.image_size}"
        )
    else:
        for case in args.cases:
            backbone, size = case.split("@")[0], int(case.split("@")[1])
            torch.manual_seed(0)
            cfg = ModelConfig(backbone=backbone, pretrained=False, image_size=size)
            model = build_classifier(cfg, 2, pretrained=False).eval()
            rows += bench(model, size, args.threads, args.runs, f"{backbone}@{size} (random weights)")
    table = Table(
        title=f"CPU inference, {args.threads} threads, median of {args.runs} runs "
        f"({torch.get_num_threads()} torch threads, load avg {Path('/proc/loadavg').read_text().split()[0]})"
    )
    for col in (
        "model",
        "runtime",
        "b1 ms",
        "b16 img/s",
        "size MB",
        "b1 vs eager",
        "INT8 argmax agreement vs fp32",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model"],
            r["runtime"],
            f"{r['b1_ms']:.1f}",
            f"{r['b16_img_s']:.1f}",
            "" if r["size_mb"] is None else f"{r['size_mb']:.1f}",
            f"{r['vs_eager_latency']:.2f}x",
            "" if r["int8_agreement"] is None else f"{r['int8_agreement']:.0%} (n=16)",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
