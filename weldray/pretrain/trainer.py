"""Driver side of the DINO warm-up: checks, start weights, the Ray Train TorchTrainer, the run directory.

The run directory (``<output_dir>/pretrain/<run_id>/``) holds ``backbone.safetensors`` (the teacher's backbone
as a timm state dict, the format ``model.weights=`` takes: training then starts from it instead of ImageNet
weights), ``metrics.json`` (the DINO loss per epoch, image counts, timing) and ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from weldray.config import ConfigError, WeldrayConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "backbone.safetensors"


def _describe(m: dict[str, Any]) -> str:
    return f"DINO loss {m['loss']:.3f} {m['images_per_s']:.1f} img/s"


def run_id_for(cfg: WeldrayConfig) -> str:
    """``pretrain.run_name`` (the same name resumes), else a timestamp plus the config hash."""
    return cfg.pretrain.run_name or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.fingerprint()[:6]}"


def check_lightly() -> None:
    try:
        import lightly  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"weldray pretrain needs the lightly package ({exc}); install it with `pip install 'weldray[pretrain]'`"
        ) from None


def initial_backbone(cfg: WeldrayConfig) -> tuple[dict[str, torch.Tensor], str, list[float], list[float]]:
    """The backbone's start weights, resolved and loaded on the driver exactly as training resolves them
    (``model.weights`` -> hub -> pip-shipped ImageNet weights; a missing file is the usual
    WeightsNotFoundError, raised here before Ray starts), with their source and the classifier's own input
    mean/std (0..1 units), which the views are normalised with."""
    from weldray.training.trainer import initial_model

    classifier = initial_model(cfg, cfg.data.labels)
    mean = (classifier.mean / 255.0).flatten().tolist()
    std = (classifier.std / 255.0).flatten().tolist()
    return classifier.backbone.state_dict(), classifier.weights_source, mean, std


def check_views(cfg: WeldrayConfig, state: dict[str, torch.Tensor]) -> None:
    """The workers' backbone takes the start weights and both view sizes (one forward pass each), else the
    crop size is named now instead of failing every worker."""
    from weldray.pretrain.loop import build_backbone

    backbone = build_backbone(cfg.model)
    backbone.load_state_dict(state)
    backbone.eval()
    p = cfg.pretrain
    for key in ("global_crop_size", "local_crop_size"):
        size = getattr(p, key)
        try:
            with torch.no_grad():
                backbone(torch.zeros(1, 3, size, size))
        except Exception as exc:  # architectures fail small inputs with many error types
            raise ConfigError(
                f"pretrain.{key}", f"{cfg.model.backbone} cannot take {size} px views: {str(exc).splitlines()[0]}"
            ) from None


def preflight(cfg: WeldrayConfig) -> tuple[dict[str, torch.Tensor], str, list[float], list[float]]:
    """Everything that would fail the run for good, checked on the driver before Ray or any worker starts:
    lightly installed, start weights found and fitting, view sizes the backbone takes, extra folders there."""
    from weldray.pretrain.data import extra_images

    check_lightly()
    start = initial_backbone(cfg)
    check_views(cfg, start[0])
    for folder in cfg.pretrain.extra_data:
        extra_images(folder, cfg)
    return start


def fit(cfg: WeldrayConfig, run_id: str, rows: Any, initial: dict[str, torch.Tensor], mean: list[float],
        std: list[float]) -> tuple[Any, int]:
    """Run the TorchTrainer (scaling as training's: ``training.num_workers`` / ``use_gpu`` / ``cpus_per_worker``
    / ``data_cpus`` / ``torch_threads`` / ``max_failures``); returns Ray's Result and the image count."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from weldray.pretrain.data import build_dataset
    from weldray.pretrain.loop import pretrain_loop_per_worker
    from weldray.training.progress import epoch_progress
    from weldray.training.trainer import WORKER_RUNTIME_ENV, _storage_path, scaling_plan

    t, p = cfg.training, cfg.pretrain
    # The epoch bar is the progress display; Ray Data's bars would flood it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    plan = scaling_plan(
        cfg, ray.cluster_resources(), [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    )
    dataset, n_images = build_dataset(rows, asdict(p), mean, std, num_cpus=min(t.data_cpus, 0.5) or 0.25)
    if n_images < p.batch_size * plan["num_workers"]:
        raise ValueError(
            f"{n_images} images is less than one step (pretrain.batch_size={p.batch_size} x "
            f"{plan['num_workers']} workers): add images (pretrain.extra_data) or lower pretrain.batch_size"
        )
    log.info("Ray Train plan: %s; %d images, %d views each", plan, n_images, 2 + p.n_local_crops)
    with epoch_progress(f"pretrain-{run_id}", p.epochs, describe=_describe) as queue:
        trainer = TorchTrainer(
            pretrain_loop_per_worker,
            train_loop_config={
                "pretrain": asdict(p),
                "model": asdict(cfg.model),
                "n_images": n_images,
                "seed": cfg.seed,
                "torch_threads": plan["torch_threads"],
                # Through the object store: one copy per node, not one per worker in the pickled config.
                "initial_backbone": ray.put(initial),
                "progress": queue,
            },
            scaling_config=ScalingConfig(
                num_workers=plan["num_workers"],
                use_gpu=plan["use_gpu"],
                resources_per_worker={"CPU": plan["cpus_per_worker"]},
            ),
            torch_config=TorchConfig(),  # gloo on CPU, NCCL on GPU (chosen by Ray from use_gpu)
            run_config=RunConfig(
                name=f"pretrain-{run_id}",
                storage_path=_storage_path(cfg),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                worker_runtime_env=WORKER_RUNTIME_ENV,
            ),
            datasets={"train": dataset},
            dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        return trainer.fit(), n_images


def save_backbone(state: dict[str, torch.Tensor], path: Path, cfg: WeldrayConfig, run_id: str) -> None:
    """Write the backbone's state dict as safetensors and load it back the way ``model.weights=`` will
    (:func:`weldray.models.weights.load_into_backbone`): a file training would refuse is never handed out."""
    import timm
    from safetensors.torch import save_file

    from weldray.models.weights import load_into_backbone, read_state_dict

    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"backbone": cfg.model.backbone, "run_id": run_id, "written_by": "weldray pretrain"})
    load_into_backbone(timm.create_model(cfg.model.backbone, pretrained=False, num_classes=0),
                       read_state_dict(path), str(path))


def pretrain(cfg: WeldrayConfig) -> Path:
    """DINO warm-up of ``cfg.model.backbone`` on ``cfg.data.root``'s photos (plus ``pretrain.extra_data`` and
    ``pretrain.synthetic_data``), labels unused; returns the run directory (see the module docstring)."""
    from omegaconf import OmegaConf

    from weldray.pretrain.data import pretrain_rows
    from weldray.ray_utils import init_ray
    from weldray.training.trainer import _read_state

    t0 = time.perf_counter()
    initial, source, mean, std = preflight(cfg)
    rows, sources = pretrain_rows(cfg)
    run_id = run_id_for(cfg)
    run_dir = Path(cfg.output_dir).resolve() / "pretrain" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())))

    init_ray(cfg.ray, job_name="pretrain")
    result, n_images = fit(cfg, run_id, rows, initial, mean, std)
    if result.error is not None:
        raise RuntimeError(f"pretraining run {run_id} failed: {result.error}") from result.error
    state = _read_state(result.checkpoint)
    backbone = {k.removeprefix("backbone."): v for k, v in state["teacher"].items() if k.startswith("backbone.")}
    weights = run_dir / WEIGHTS_FILE
    save_backbone(backbone, weights, cfg, run_id)
    history = state["history"]
    summary = {
        "run_id": run_id,
        "backbone": cfg.model.backbone,
        "initial_weights": source,
        "weights": str(weights),
        "use_with": f"model.backbone={cfg.model.backbone} model.weights={weights}",
        "images": {**sources, "n_decoded": n_images},
        "views_per_image": {"global": 2, "local": cfg.pretrain.n_local_crops},
        "history": history,
        "loss_first": history[0]["loss"],
        "loss_last": history[-1]["loss"],
        "epochs_run": len(history),
        "ray_storage": str(result.path),
        "total_wall_s": round(time.perf_counter() - t0, 1),
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("DINO loss %.4f -> %.4f over %d epochs; backbone weights: %s (train with model.weights=%s)",
             summary["loss_first"], summary["loss_last"], len(history), weights, weights)
    return run_dir
