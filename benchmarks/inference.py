"""Batch-1 latency and batch-16 throughput: PyTorch eager vs ONNX Runtime fp32 vs static INT8.

    .venv/bin/python benchmarks/inference.py [--checkpoint RUN_DIR [RUN_DIR ...]] [--threads 2] [--runs 20]
        [--cases efficientnet_lite0@224 convnextv2_nano@448]

Several --checkpoint runs are timed alone (the first) and as one ensemble graph of all of them (the cost of an
ensemble: ``weldray export RUN RUN ...``). Without --checkpoint the backbones run with random weights (fine for
speed; agreement figures then
compare near-tied probabilities and understate INT8 quality: pass a trained run for those).

Fairness: eager runs under ``torch.inference_mode`` with the same thread count as ONNX Runtime;
"eager channels_last" is shown too (a free PyTorch speed-up a user could apply). The runtimes are
timed round-robin (one call each, repeated) so that all of them see the same load on a shared
machine; the table gives the median and the best (min) wall time. "CPU ms, 1 thread" is the CPU
time of one call with one thread (``time.thread_time``): nearly insensitive to other processes,
so it is the steadiest comparison of the work each runtime does.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "welds"
CASES = [("efficientnet_lite0", 224), ("convnextv2_nano", 448)]


def _round_robin(fns: dict[str, Callable[[], object]], runs: int, clock=time.perf_counter) -> dict[str, np.ndarray]:
    """Per-call times (ms) of every fn, called in turn ``runs`` times after 2 warm-up rounds."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append((clock() - t0) * 1000)
    return {k: np.array(v) for k, v in times.items()}


def _inputs(size: int, n: int, offset: int = 0) -> np.ndarray:
    """n real photos spread over both classes (``offset`` shifts the pick: disjoint sets)."""
    from weldray.export.parity import load_inputs

    files = sorted(REAL.glob("*/*.jpg"))
    if files:
        return load_inputs([str(f) for f in files[offset :: max(2, len(files) // n)][:n]], size)[0]
    return np.random.default_rng(0).uniform(0, 255, (n, 3, size, size)).astype(np.float32)


def bench(model, size: int, threads: int, runs: int, label: str, n_agree: int, float_layers: int) -> list[dict]:
    import torch

    from weldray.export.onnx_export import export_onnx
    from weldray.export.parity import compare, session_probabilities
    from weldray.export.quantize import Int8Setting, preprocess, quantize_int8
    from weldray.inference import create_session

    x_agree = _inputs(size, n_agree)
    x16 = x_agree[:16]
    x1 = x16[:1]
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_onnx(model, Path(tmp) / "m.onnx", size)
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        int8_path = quantize_int8(
            pre, Path(tmp) / "m.int8.onnx", _inputs(size, 64, offset=1), Int8Setting(float_layers)
        )
        paths = {"ort fp32": fp32_path, "ort int8": int8_path}
        agree = compare(
            session_probabilities(create_session(str(fp32_path), "CPUExecutionProvider"), x_agree, 1.0),
            session_probabilities(create_session(str(int8_path), "CPUExecutionProvider"), x_agree, 1.0),
        )
        # Same weights in the other layout (Module.to is in place: copy first).
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)

        def timings(n_threads: int, x: np.ndarray, n: int, clock=time.perf_counter) -> dict[str, np.ndarray]:
            torch.set_num_threads(n_threads)
            sessions = {k: create_session(str(p), "CPUExecutionProvider", intra_op_threads=n_threads)
                        for k, p in paths.items()}
            t = torch.from_numpy(x)
            with torch.inference_mode():
                fns = {
                    "torch eager": lambda: model(t),
                    "torch eager channels_last": lambda: cl(t),
                    **{k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()},
                }
                return _round_robin(fns, n, clock)

        b1 = timings(threads, x1, runs)
        b16 = timings(threads, x16, max(2, runs // 4))
        cpu1 = timings(1, x1, max(3, runs // 2), clock=time.thread_time)
        torch.set_num_threads(threads)
        rows = []
        eager = float(np.median(b1["torch eager"]))
        eager_cpu = float(np.median(cpu1["torch eager"]))
        for name in b1:
            rows.append(
                {
                    "model": label,
                    "runtime": name,
                    "b1_ms": float(np.median(b1[name])),
                    "b1_best_ms": float(b1[name].min()),
                    "cpu1_ms": float(np.median(cpu1[name])),
                    "b16_img_s": 16 / (float(np.median(b16[name])) / 1000),
                    "size_mb": paths[name].stat().st_size / 1e6 if name in paths else None,
                    "vs_eager": float(np.median(b1[name])) / eager,
                    "vs_eager_cpu": float(np.median(cpu1[name])) / eager_cpu,
                    "int8_agreement": agree if name == "ort int8" else None,
                }
            )
    return rows


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from weldray.config import ModelConfig
    from weldray.models import build_classifier, load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", nargs="+", help="trained run dirs / model.pt instead of random-weight backbones (several: "
        "the first alone and all as one ensemble)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--agreement-images", type=int, default=64, help="real photos for INT8 vs fp32 agreement")
    parser.add_argument("--float-layers", type=int, default=12, help="export.int8_float_layers")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=[f"{b}@{s}" for b, s in CASES],
        help="backbone@size entries (default: the cpu and production profiles)",
    )
    args = parser.parse_args()
    load = [float(Path("/proc/loadavg").read_text().split()[0])]
    rows = []
    kw = {"n_agree": args.agreement_images, "float_layers": args.float_layers}
    if args.checkpoint:
        from weldray.export.ensemble import load_ensemble

        model, meta = load_checkpoint(args.checkpoint[0])
        label = f"{meta.model['backbone']}@{meta.image_size}"
        rows += bench(model.eval(), meta.image_size, args.threads, args.runs, label, **kw)
        if len(args.checkpoint) > 1:
            ensemble, _ = load_ensemble(args.checkpoint)
            rows += bench(ensemble, meta.image_size, args.threads, args.runs,
                          f"ensemble of {len(args.checkpoint)} x {label}", **kw)
    else:
        for case in args.cases:
            backbone, size = case.split("@")[0], int(case.split("@")[1])
            torch.manual_seed(0)
            cfg = ModelConfig(backbone=backbone, pretrained=False, image_size=size)
            model = build_classifier(cfg, 2, pretrained=False).eval()
            rows += bench(model, size, args.threads, args.runs, f"{backbone}@{size} (random weights)", **kw)
    load.append(float(Path("/proc/loadavg").read_text().split()[0]))
    table = Table(
        title=f"CPU inference, {args.threads} threads, {args.runs} round-robin runs, load avg "
        f"{min(load):.1f}-{max(load):.1f} (ORT {__import__('onnxruntime').__version__}, torch {torch.__version__})"
    )
    for col in (
        "model",
        "runtime",
        "b1 ms median (best)",
        "b1 vs eager",
        "CPU ms, 1 thread",
        "CPU vs eager",
        "b16 img/s",
        "size MB",
        "INT8 argmax agreement vs fp32",
    ):
        table.add_column(col)
    for r in rows:
        a = r["int8_agreement"]
        table.add_row(
            r["model"],
            r["runtime"],
            f"{r['b1_ms']:.1f} ({r['b1_best_ms']:.1f})",
            f"{r['vs_eager']:.2f}x",
            f"{r['cpu1_ms']:.1f}",
            f"{r['vs_eager_cpu']:.2f}x",
            f"{r['b16_img_s']:.1f}",
            "" if r["size_mb"] is None else f"{r['size_mb']:.1f}",
            "" if a is None else f"{a.argmax_agreement:.1%} (n={a.n}, max |dp| {a.max_abs_prob_diff:.2f})",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
