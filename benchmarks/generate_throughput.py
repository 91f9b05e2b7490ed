"""Generator throughput: the Ray Data generate job vs a plain single-process loop doing the same work.

    make bench-generate ARGS='[--input DIR] [--n 120] [--tiny-sdxl] [key=value ...]'

Without options it measures ``copy_paste``. ``--tiny-sdxl`` measures ``sdxl_turbo`` on CPU with the tests' tiny
random SDXL + ControlNet (64 px, one denoising step, built in code: no real weights here), for the record of
what the job's own overhead is around a diffusion model; real SDXL-Turbo needs a GPU.

Both sides plan the same (source, seed) tasks from INPUT's labelled photos and, per task, read the sources,
paste, encode and write the JPEG and build its record (the loop calls the actors' own code). The Ray side is
``synthetic.concurrency`` actors of ``synthetic.num_cpus_per_actor`` CPUs on an already started local Ray
(start-up excluded, actor construction included on both sides); the quality gate is off on both. Prints one
JSON line with images/s of each side, per CPU core, the ratio, and the load average before and after (the
machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "welds"))
    ap.add_argument("--n", type=int, default=120, help="images per side (half per class)")
    ap.add_argument("--tiny-sdxl", action="store_true", help="sdxl_turbo with tiny random models (see above)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray

    from weldray.config import load_config
    from weldray.ray_utils import init_ray
    from weldray.synthetic.base import generator_class
    from weldray.synthetic.job import generate, generate_loop, source_rows

    work = Path(tempfile.mkdtemp(prefix="weldray-bench-gen-"))
    generator = ["synthetic.generator=copy_paste"]
    if args.tiny_sdxl:
        from tests.synthetic.tiny_sdxl import build_tiny_sdxl

        tiny = build_tiny_sdxl(work / "tiny_sdxl")
        generator = ["synthetic.generator=sdxl_turbo", f"synthetic.sdxl_model={tiny.sdxl_dir}",
                     f"synthetic.controlnet_model={tiny.controlnet_dir}", "synthetic.image_size=64",
                     "synthetic.num_inference_steps=2", "synthetic.strength=0.5"]
    cfg = load_config([f"output_dir={work}", f"synthetic.n_per_class={args.n // 2}", *generator,
                       "synthetic.min_teacher_confidence=0", "synthetic.contact_sheet_size=0", *args.overrides])
    rows, _, manifest = source_rows(args.input, cfg)
    tasks = generator_class(cfg.synthetic.generator).plan(cfg, rows)
    load_before = os.getloadavg()[0]

    t0 = time.perf_counter()
    loop = generate_loop(tasks, rows, str(work / "loop"), cfg)
    loop_s = time.perf_counter() - t0

    init_ray(cfg.ray, job_name="bench")
    try:
        t0 = time.perf_counter()
        report = generate(manifest, str(work / "ray"), cfg, progress=False)
        ray_s = report.summary["generate_wall_s"]
        total_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    cores = os.cpu_count() or 1
    n_loop, n_ray = int((loop["status"] == "ok").sum()), report.summary["n_generated"]
    print(json.dumps({
        "generator": cfg.synthetic.generator, "n": len(tasks), "cores": cores, "concurrency": cfg.synthetic.concurrency,
        "num_cpus_per_actor": cfg.synthetic.num_cpus_per_actor,
        "loop_images_per_s": round(n_loop / loop_s, 2), "ray_images_per_s": round(n_ray / ray_s, 2),
        "loop_images_per_s_per_core": round(n_loop / loop_s / cores, 2),
        "ray_images_per_s_per_core": round(n_ray / ray_s / cores, 2),
        "ray_vs_loop": round((n_ray / ray_s) / (n_loop / loop_s), 3),
        "ray_job_with_gate_and_writes_s": round(total_s, 1),
        "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
