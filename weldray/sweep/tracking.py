"""Experiment trackers of a sweep (``sweep.wandb``, ``sweep.mlflow``): Ray Tune's logger callbacks, one tracker
run per trial with its sampled values and its metrics per epoch. Off by default; neither needs the network
unless told to (W&B's online mode, a remote MLflow URI)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from weldray.config import ConfigError
from weldray.sweep.space import Study
from weldray.tracking import allow_file_store

#: W&B modes a sweep accepts in $WANDB_MODE.
WANDB_MODES = ("offline", "online", "disabled", "shared")


def _require(package: str, key: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(key, f"needs the {package} package: pip install 'weldray[tracking]'")


def tracker_callbacks(study: Study, sweep_dir: Path) -> list[Any]:
    """The Tune callbacks the sweep's settings ask for; built on the driver before Ray starts, so a missing
    package or a bad mode fails first."""
    callbacks: list[Any] = []
    if study.sweep.mlflow.enabled:
        _require("mlflow", "sweep.mlflow.enabled")
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = allow_file_store(study.sweep.mlflow.tracking_uri or f"file:{sweep_dir / 'mlruns'}")
        callbacks.append(
            MLflowLoggerCallback(tracking_uri=uri, experiment_name=study.name, tags={"space": study.path.name})
        )
    if study.sweep.wandb.enabled:
        _require("wandb", "sweep.wandb.enabled")
        from ray.air.integrations.wandb import WandbLoggerCallback

        # Offline unless the user says otherwise: a sweep must run without the network. Set here too because
        # Ray asks for an API key unless $WANDB_MODE is offline or disabled.
        mode = os.environ.setdefault("WANDB_MODE", "offline")
        if mode not in WANDB_MODES:
            raise ConfigError("WANDB_MODE", f"must be one of {list(WANDB_MODES)} for a sweep, got {mode!r}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(
            WandbLoggerCallback(project=study.sweep.wandb.project, group=study.name, mode=mode, dir=str(sweep_dir))
        )
    return callbacks
