"""Training throughput: a bare PyTorch loop vs Ray Train (TorchTrainer, gloo) with 1 and 2 workers.

Same model (cfg.model, ImageNet init off), same synthetic uint8 batches, same total torch
threads (the machine's cores, split across workers). Reports images/s over the timed steps and
peak RSS per training process. Not a test; numbers are noisy on a shared machine.

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--batch 16] [--size 224] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any

import torch


def _step_loop(model: torch.nn.Module, steps: int, warmup: int, batch: int, size: int) -> dict[str, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    # channels_last input (the models are converted before DDP wrapping), as in weldray.training.loop.
    x = torch.randint(0, 256, (batch, 3, size, size), generator=g).float().contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), generator=g)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    return {
        "images_per_s": steps * batch / dt,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _ray_loop(config: dict[str, Any]) -> dict[str, float]:
    import ray.train
    import ray.train.torch

    from weldray.config import ModelConfig
    from weldray.models import build_classifier

    torch.set_num_threads(config["threads"])
    model = ray.train.torch.prepare_model(
        build_classifier(ModelConfig(**config["model"]), 2, pretrained=False).to(memory_format=torch.channels_last)
    )
    world = ray.train.get_context().get_world_size()
    res = _step_loop(model, config["steps"], config["warmup"], config["batch"], config["size"])
    res["images_per_s"] *= world  # every worker processes its own batch per step
    return res  # rank 0's value comes back as Result.return_value (V2)


def main() -> None:
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from weldray.config import load_config
    from weldray.models import build_classifier
    from weldray.ray_utils import init_ray
    from weldray.training.trainer import WORKER_RUNTIME_ENV

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.overrides)
    cores = os.cpu_count() or 1
    rows = []

    torch.set_num_threads(cores)
    model = build_classifier(cfg.model, 2, pretrained=False).to(memory_format=torch.channels_last)
    bare = _step_loop(model, args.steps, args.warmup, args.batch, args.size)
    rows.append(("bare PyTorch", 1, cores, bare["images_per_s"], bare["peak_rss_mb"]))

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(cfg.ray)
    try:
        for workers in (1, 2):
            threads = max(1, cores // workers)
            trainer = TorchTrainer(
                _ray_loop,
                train_loop_config={
                    "model": asdict(cfg.model),
                    "threads": threads,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "batch": args.batch // workers,
                    "size": args.size,
                },
                scaling_config=ScalingConfig(
                    num_workers=workers, resources_per_worker={"CPU": min(1.0, cores / workers)}
                ),
                run_config=RunConfig(
                    storage_path=os.path.abspath(cfg.ray.storage_path),
                    name=f"bench-{workers}w-{time.time():.0f}",
                    worker_runtime_env=WORKER_RUNTIME_ENV,  # as weldray.training.trainer.fit runs it
                ),
            )
            m = trainer.fit().return_value
            rows.append(
                (f"Ray Train {workers} worker(s)", workers, threads, m["images_per_s"], m["peak_rss_mb"])
            )
    finally:
        ray.shutdown()

    table = Table(
        title=f"{cfg.model.backbone} @{args.size}, global batch {args.batch}, {args.steps} timed steps"
    )
    for col in ("setup", "workers", "threads/worker", "images/s", "vs bare", "peak RSS/worker (MB)"):
        table.add_column(col)
    for name, w, t, ips, rss in rows:
        table.add_row(name, str(w), str(t), f"{ips:.1f}", f"{ips / rows[0][3]:.0%}", f"{rss:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
