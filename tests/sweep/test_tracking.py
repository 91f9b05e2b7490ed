"""A sweep's experiment trackers, as a user checks them: after a Tune run with the callbacks the sweep builds
(a trivial trainable stands in for `weldray train`), one tracker run per trial holds its sampled values and
its metrics, in the sweep folder, without the network."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from weldray.sweep.run import trial_name
from weldray.sweep.space import load_space
from weldray.sweep.tracking import tracker_callbacks

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

LRS = (0.001, 0.01)


def _loss(lr: float, epoch: int) -> float:
    return lr * 10 / (epoch + 1)


def _tune(callbacks: list[Any], storage: Path) -> dict[str, float]:
    """Two trials of two epochs each; returns trial id -> its training.lr."""
    from ray import tune

    def trainable(config: dict[str, Any]) -> None:
        for epoch in range(2):
            tune.report({"val_loss_best": _loss(config["training.lr"], epoch), "epochs_done": epoch + 1})

    grid = tune.Tuner(
        trainable,
        param_space={"training.lr": tune.grid_search(list(LRS)), "model.margin": 0.3},
        tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name="tune", storage_path=str(storage), callbacks=callbacks, verbose=0),
    ).fit()
    assert not grid.errors
    return {Path(r.path).name.removeprefix("trial-"): r.config["training.lr"] for r in grid}


def test_mlflow_keeps_one_run_per_trial_with_its_values_and_metrics(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the tracking extra (mlflow) is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # set by the sweep for its default store
    study = load_space("smoke", ["sweep.mlflow.enabled=true"])
    sweep_dir = tmp_path / "sweeps" / "smoke"
    trials = _tune(tracker_callbacks(study, sweep_dir), tmp_path)

    client = MlflowClient(f"file:{sweep_dir / 'mlruns'}")  # the default store: a folder in the sweep's
    runs = client.search_runs([client.get_experiment_by_name(study.name).experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"trial-{t}" for t in trials)
    for run in runs:
        lr = trials[run.info.run_name.removeprefix("trial-")]
        assert run.info.status == "FINISHED" and run.data.tags["space"] == "smoke.yaml"
        assert float(run.data.params["training.lr"]) == lr and run.data.params["model.margin"] == "0.3"
        history = client.get_metric_history(run.info.run_id, "val_loss_best")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([_loss(lr, 0), _loss(lr, 1)])


def test_wandb_is_offline_unless_told_and_writes_one_run_per_trial_in_the_sweep_folder(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="the tracking extra (wandb) is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    study = load_space("smoke", ["sweep.wandb.enabled=true", "sweep.wandb.project=weld-test"])
    sweep_dir = tmp_path / "sweeps" / "smoke"
    callbacks = tracker_callbacks(study, sweep_dir)
    assert os.environ["WANDB_MODE"] == "offline"
    trials = _tune(callbacks, tmp_path)

    runs = {p.name.rsplit("-", 1)[1]: p for p in (sweep_dir / "wandb").glob("offline-run-*")}
    assert set(runs) == set(trials)  # W&B's run id is the trial id
    for trial, run in runs.items():
        # The record log `wandb sync` uploads (protobuf records with JSON values): the trial's sampled value and
        # its last epoch's metric.
        log = (run / f"run-{trial}.wandb").read_bytes()
        lr = trials[trial]
        for key, value in (("training.lr", lr), ("val_loss_best", _loss(lr, 1))):
            assert re.search(re.escape(key.encode()) + b".{1,4}" + re.escape(json.dumps(value).encode()), log), key

    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(ValueError, match="WANDB_MODE: must be one of"):
        tracker_callbacks(study, sweep_dir)
