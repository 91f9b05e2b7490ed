"""Driver side of training: data, Ray Train TorchTrainer, calibration, run directory, report."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from weldray.config import ConfigError, WeldrayConfig

log = logging.getLogger(__name__)


def run_id_for(cfg: WeldrayConfig) -> str:
    """``training.run_name`` (the same name resumes), else a timestamp plus the config hash."""
    return cfg.training.run_name or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.fingerprint()[:6]}"


def run_dir_for(cfg: WeldrayConfig, run_id: str) -> Path:
    return Path(cfg.output_dir).resolve() / "runs" / run_id


def _storage_path(cfg: WeldrayConfig) -> str:
    from weldray.io import is_s3

    return cfg.ray.storage_path if is_s3(cfg.ray.storage_path) else str(Path(cfg.ray.storage_path).resolve())


def scaling_plan(
    cfg: WeldrayConfig, cluster: dict[str, float], node_cpus: list[float] | None = None
) -> dict[str, Any]:
    """Workers, CPUs per worker, GPU use and torch threads from config and the cluster.

    CPUs per worker are capped so ``training.data_cpus`` stay free for Ray Data tasks: on a
    2-core machine a worker holding both cores starves the decode/augment tasks (deadlock).
    They are also capped at the largest node's CPUs (``node_cpus``): a worker cannot span nodes,
    and one sized from the cluster total would never be placed on a cluster of small nodes.
    """
    t = cfg.training
    total_cpu = float(cluster.get("CPU", os.cpu_count() or 1))
    gpus = float(cluster.get("GPU", 0))
    use_gpu = gpus >= t.num_workers if t.use_gpu == "auto" else t.use_gpu == "true"
    if use_gpu and gpus < t.num_workers:
        raise RuntimeError(
            f"training.use_gpu=true with {t.num_workers} workers but the cluster has {gpus:g} GPUs"
        )
    room = max(total_cpu - t.data_cpus, 0.25 * t.num_workers)
    cpus = min(t.cpus_per_worker, room / t.num_workers, *(node_cpus or []))
    threads = t.torch_threads or max(1, int(round((os.cpu_count() or 1) / t.num_workers)))
    return {
        "num_workers": t.num_workers,
        "cpus_per_worker": round(cpus, 3),
        "use_gpu": use_gpu,
        "torch_threads": threads,
    }


def runs_at_once(cfg: WeldrayConfig) -> int:
    """Training runs of ``cfg`` that the connected Ray cluster holds at once: each needs its workers' placement
    group and its Ray Data CPUs at the same time (one at a time on 2 cores with the cpu profile)."""
    import ray

    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    plan = scaling_plan(cfg, ray.cluster_resources(), nodes)
    per_run = plan["num_workers"] * plan["cpus_per_worker"] + cfg.training.data_cpus
    return max(1, int(ray.cluster_resources().get("CPU", 1) // per_run))


#: Ray Train runs the training function in a thread of each worker process, and glibc gives that thread a
#: malloc arena of its own whose heaps stop at 64 MB: every activation tensor of every step becomes a fresh
#: mmap (page faults, zeroing) instead of reused heap memory. One arena, the main one, serves the training
#: thread as it serves a plain script's: +9 % img/s for Lite0 in a thread, +6 % under Ray Train on 2 cores.
WORKER_RUNTIME_ENV: dict[str, Any] = {"env_vars": {"MALLOC_ARENA_MAX": "1"}}


def initial_model(cfg: WeldrayConfig, classes: list[str]) -> torch.nn.Module:
    """The model every worker starts from, built on the driver: pretrained weights are resolved and
    loaded here, before Ray or any worker starts.

    A missing or unfitting weights file is deterministic: raised here it surfaces once, with its message,
    instead of failing every worker and being retried by Ray Train's FailureConfig (which is for what can
    succeed on retry: a lost worker or node). Workers then need no weights file of their own, so
    ``model.weights`` may name a file that only the driver's machine has.
    """
    from weldray.models import build_classifier

    torch.manual_seed(cfg.seed)
    return build_classifier(cfg.model, len(classes), classes=classes)


def fit(
    cfg: WeldrayConfig,
    run_id: str,
    run_dir: Path,
    splits: Any,
    classes: list[str],
    initial: torch.nn.Module,
    callbacks: list[Any] | None = None,
    progress: bool = True,
    run_labels: dict[str, Any] | None = None,
) -> Any:
    """Run the TorchTrainer from ``initial``'s weights; returns Ray's Result (latest checkpoint holds the
    kept weights). ``callbacks``: Ray Train callbacks (a sweep's trial passes the one reporting to Tune);
    ``progress``: the live epoch bar on the driver's console (:mod:`weldray.training.progress`);
    ``run_labels``: shown with the run (named ``run_id``) on the Ray dashboard's Train page, in its run
    settings' ``train_loop_config`` (Train V2 has no other per-run metadata: ``metadata=`` is deprecated)."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from weldray.training.data import build_datasets, class_weights
    from weldray.training.loop import train_loop_per_worker
    from weldray.training.progress import epoch_progress

    t = cfg.training
    # The epoch bar is the progress display; Ray Data's bars would flood it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    plan = scaling_plan(
        cfg, ray.cluster_resources(), [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    )
    log.info(
        "Ray Train plan: %s; data: %s (train %d, val %d, test %d)",
        plan,
        splits.description,
        len(splits.train),
        len(splits.val),
        len(splits.test),
    )
    data_cpus = min(t.data_cpus, 0.5) or 0.25
    train_rows, datasets = build_datasets(
        splits, list(t.image_sizes), cfg.model.image_size, num_cpus=data_cpus, boxes=t.box_crop_prob > 0
    )
    loop_config = {
        "training": asdict(t),
        "model": asdict(cfg.model),
        "classes": classes,
        "class_weights": class_weights(splits.train["label_index"].to_numpy(), len(classes)),
        "n_train": len(splits.train),
        "has_val": not splits.val.empty,
        "seed": cfg.seed,
        # Each epoch's batches are a Ray Data execution of the worker's (:func:`weldray.training.data.epoch_batches`):
        # Ray Train's own dataset shards are drawn in whatever order the tasks finish, which no seed can fix.
        "train_rows": train_rows,
        "data_cpus": data_cpus,
        "torch_threads": plan["torch_threads"],
        "run_id": run_id,
        "tensorboard_dir": str(run_dir / "tensorboard"),
        "mlflow_uri": t.mlflow_tracking_uri or f"file:{Path(cfg.output_dir).resolve() / 'mlruns'}",
        "run_labels": run_labels or {},
        # Through the object store: one copy per node, not one per worker in the pickled config.
        "initial_state": ray.put(initial.state_dict()),
    }
    with epoch_progress(run_id, t.epochs, enabled=progress) as queue:
        loop_config["progress"] = queue
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(
                num_workers=plan["num_workers"],
                use_gpu=plan["use_gpu"],
                resources_per_worker={"CPU": plan["cpus_per_worker"]},
            ),
            torch_config=TorchConfig(),  # gloo on CPU, NCCL on GPU (chosen by Ray from use_gpu)
            run_config=RunConfig(
                name=run_id,
                storage_path=_storage_path(cfg),
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                worker_runtime_env=WORKER_RUNTIME_ENV,
                callbacks=callbacks,
            ),
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split=[]),  # every worker validates on all the val rows
        )
        return trainer.fit()


def _read_state(checkpoint: Any) -> dict[str, Any]:
    from weldray.training.loop import STATE_FILE

    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)


def _evaluation_source(cfg: WeldrayConfig, splits: Any) -> dict[str, Any]:
    """Where this run's figures and, without validation rows, its temperature come from.

    A final fit (nothing held out) is judged by the out-of-fold predictions of ``weldray cv`` of the same
    recipe (found by :func:`~weldray.training.cv.cv_summary_path`); a CV fold or a holdout run by its
    own held-out rows.
    """
    from weldray.training.cv import cv_summary_path

    if not splits.test.empty:
        return {"source": f"held-out rows ({splits.description})", "calibration": "none (T=1)"}
    if not splits.val.empty:
        return {"source": "none: no test rows held out", "calibration": "validation rows"}
    path = cv_summary_path(cfg)
    if not path.is_file():
        log.warning(
            "final fit on every labelled row, and no cross-validation of this recipe at %s: the model is "
            "uncalibrated (T=1) and its accuracy unknown. Run `weldray cv DATA` with the same overrides first",
            path,
        )
        return {
            "source": None, "calibration": "none (T=1): no cross-validation of this recipe", "cv_summary": str(path)
        }
    summary = json.loads(path.read_text())
    k = len(summary["folds"])
    return {
        "source": f"out-of-fold predictions of {k}-fold group cross-validation of this recipe",
        "calibration": f"fitted on {summary['oof']['n']} out-of-fold predictions ({k} of {cfg.data.n_folds} folds)",
        "cv_summary": str(path),
        "oof_temperature": summary["oof_temperature"],
        "oof": summary["oof"],
        "folds": [f["fold"] for f in summary["folds"]],
    }


def _mix_synthetic(cfg: WeldrayConfig, splits: Any) -> Any:
    """The train rows with ``training.synthetic_data``'s accepted images mixed in at ``training.mix_real_ratio``
    (lineage checked against the real train rows); validation and test rows stay real."""
    from weldray.synthetic.lineage import mix, synthetic_rows

    t = cfg.training
    if t.synthetic_data is None:
        raise ConfigError(
            "training.synthetic_data",
            f"training.mix_real_ratio={t.mix_real_ratio} needs synthetic images: set it to a `weldray generate` "
            "output (or run `weldray pipeline`, whose generate stage makes them)",
        )
    mixed = mix(splits.train, synthetic_rows(cfg, splits.train), t.mix_real_ratio, cfg.seed)
    n_syn = int(mixed["synthetic"].sum())
    log.info("mixing %d synthetic images into %d real train rows (%.0f%% real)", n_syn, len(splits.train),
             100 * len(splits.train) / len(mixed))
    return replace(splits, train=mixed, description=f"{splits.description}, + {n_syn} synthetic ({t.synthetic_data})")


def train(
    cfg: WeldrayConfig,
    callbacks: list[Any] | None = None,
    *,
    progress: bool = True,
    run_labels: dict[str, Any] | None = None,
) -> Path:
    """Train on ``cfg.data.root`` (folder, s3:// URI, manifest; None = procedural sample) and
    return the run directory: ``model.pt`` (the kept weights: final EMA weights, or the best
    validation epoch with early stopping; temperature fitted on validation),
    ``config.yaml``, ``metrics.json``, ``tensorboard/`` and ``report/``. ``callbacks`` go to Ray Train;
    ``run_labels`` to the run's entry on the dashboard (:func:`fit`)."""
    from omegaconf import OmegaConf

    from weldray.data import load_manifest, manifest_sha256, resolve_dataset
    from weldray.evaluation.metrics import fit_temperature
    from weldray.evaluation.predict import predict_logits
    from weldray.evaluation.report import evaluate_rows
    from weldray.models import CheckpointMeta, build_classifier, save_checkpoint
    from weldray.ray_utils import init_ray
    from weldray.training.data import check_box_labels, split_rows

    t0 = time.perf_counter()
    run_id = run_id_for(cfg)
    run_dir = run_dir_for(cfg, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict())))

    manifest_path = resolve_dataset(cfg)
    manifest = load_manifest(manifest_path)
    classes = cfg.data.labels
    splits = split_rows(manifest, cfg.training.cv_fold, cfg.training.holdout)
    if splits.train.empty or (cfg.training.holdout and splits.val.empty):
        raise ValueError(
            f"{manifest_path}: empty train ({len(splits.train)}) or, with training.holdout, val "
            f"({len(splits.val)}) rows"
        )
    if cfg.training.mix_real_ratio < 1:
        splits = _mix_synthetic(cfg, splits)
    check_box_labels(splits.train, cfg.training.box_crop_prob)

    initial = initial_model(cfg, classes)
    init_ray(cfg.ray, job_name="train")
    result = fit(cfg, run_id, run_dir, splits, classes, initial, callbacks, progress, run_labels)
    if result.error is not None:
        raise RuntimeError(f"training run {run_id} failed: {result.error}") from result.error
    state = _read_state(result.checkpoint)

    model = build_classifier(cfg.model, len(classes), pretrained=False, classes=classes)
    model.load_state_dict(state["kept_model"])
    model.eval()
    torch.set_num_threads(os.cpu_count() or 1)
    evaluation = _evaluation_source(cfg, splits)
    if not splits.val.empty:
        val_logits = predict_logits(model, splits.val["path"].tolist(), cfg.model.image_size)
        temperature = fit_temperature(val_logits, splits.val["label_index"].to_numpy())
        calibration = f"fitted on {len(splits.val)} validation images"
    else:
        temperature = float(evaluation.get("oof_temperature", 1.0))
        calibration = evaluation["calibration"]
    log.info("temperature %.3f (%s)", temperature, calibration)

    train_time = time.perf_counter() - t0
    meta = CheckpointMeta(
        classes=classes,
        image_size=cfg.model.image_size,
        model=asdict(cfg.model),
        temperature=temperature,
        run_id=run_id,
        manifest_sha256=manifest_sha256(manifest_path),
        metrics={
            **{k: v for k, v in state["kept_metrics"].items() if isinstance(v, (int, float, str))},
            **{f"cv_{k}": v for k, v in evaluation.get("oof", {}).items() if isinstance(v, (int, float))},
            "evaluation_source": evaluation["source"],
        },
    )
    save_checkpoint(run_dir / "model.pt", model, meta)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "manifest": str(manifest_path),
        "data": splits.description,
        "n_train": len(splits.train),
        "n_train_synthetic": int(splits.train["synthetic"].sum()) if "synthetic" in splits.train else 0,
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "temperature": temperature,
        "calibration": calibration,
        "evaluation": evaluation,
        "kept": state["kept_metrics"],
        "history": state["history"],
        "epochs_run": len(state["history"]),
        "train_wall_s": round(train_time, 1),
        "ray_storage": str(result.path),
    }
    if not splits.test.empty:
        summary["test"] = evaluate_rows(
            model,
            meta,
            splits.test,
            run_dir / "report",
            cfg,
            title=f"{run_id}: held-out {splits.description}",
            calibration=calibration,
        )
    summary["total_wall_s"] = round(time.perf_counter() - t0, 1)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return run_dir
