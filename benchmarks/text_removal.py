"""Text-removal throughput: the Ray Data job vs a plain single-process loop doing the same work.

    .venv/bin/python benchmarks/text_removal.py [--input DIR] [--n 24] [--procedural 16] [key=value ...]

Both sides read, decode, detect (+ recognise), inpaint, encode, re-detect (the audit), write every image;
the loop is one process with onnxruntime's default threads over all cores, the Ray side is
``text_removal.concurrency`` actors with ``text_removal.num_threads`` threads each. Prints a JSON
line with images/s, the ratio, per-stage medians (inpaint and audit over the images with text: an image
without text is searched once and written as it is) and (with --procedural N) the procedural metrics.
The CPU may be shared: the load average before and after is part of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _stages(side: str, records) -> dict[str, float | int]:
    ok = records[records.status == "ok"]
    text = ok[ok.n_text_boxes > 0]
    return {
        f"{side}_n_with_text": len(text),
        f"{side}_detect_ms_median": float(ok.detect_ms.median()),
        f"{side}_inpaint_ms_median": float(text.inpaint_ms.median()) if len(text) else 0.0,
        f"{side}_audit_ms_median": float(text.audit_ms.median()) if len(text) else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "welds"))
    ap.add_argument("--n", type=int, default=24, help="images (taken evenly from INPUT)")
    ap.add_argument(
        "--procedural", type=int, default=0, help="also score N procedural (text, text-free) pairs"
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray

    from weldray import io as wio
    from weldray.config import load_config
    from weldray.ray_utils import init_ray
    from weldray.text_removal.pipeline import clean_dataset, clean_loop

    cfg = load_config(args.overrides)
    files = wio.list_files(args.input, cfg.data.extensions)
    files = files[:: max(1, len(files) // args.n)][: args.n]
    work = Path(tempfile.mkdtemp(prefix="weldray-bench-"))
    inp = work / "in"
    for f in files:
        rel = Path(f).relative_to(args.input)
        (inp / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, inp / rel)
    local = sorted(str(p) for p in inp.rglob("*") if p.is_file())
    out: dict[str, object] = {"n_images": len(local), "cpus": os.cpu_count(), "load_before": os.getloadavg()}

    loop_cfg = load_config([*args.overrides, "text_removal.num_threads=0"])
    t = time.perf_counter()
    rec = clean_loop(local, str(inp), str(work / "loop"), loop_cfg)
    loop_s = time.perf_counter() - t
    out.update(loop_images_per_s=len(local) / loop_s, **_stages("loop", rec))

    init_ray(cfg.ray)
    try:
        t = time.perf_counter()
        report = clean_dataset(str(inp), str(work / "ray"), cfg, progress=False)
        ray_s = time.perf_counter() - t
    finally:
        ray.shutdown()
    out.update(
        ray_images_per_s=len(local) / ray_s,
        ray_seconds_incl_actor_start=ray_s,
        **_stages("ray", report.records),
        ray_vs_loop=(len(local) / ray_s) / (len(local) / loop_s),
        concurrency=cfg.text_removal.concurrency,
        num_cpus_per_actor=cfg.text_removal.num_cpus_per_actor,
        num_threads=cfg.text_removal.num_threads,
        load_after=os.getloadavg(),
    )

    if args.procedural:
        from weldray.text_removal.cleaner import TextCleaner
        from weldray.text_removal.evaluate import evaluate_procedural

        out["procedural"] = evaluate_procedural(TextCleaner(cfg.text_removal), args.procedural).as_dict()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
