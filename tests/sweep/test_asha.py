"""ASHA stopping one Ray Train run after another, on 2 CPUs: each stopped trial's Train placement group is freed
(Ray once leaked them there, and the next trial then waited forever for its workers' CPUs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ray


def _trial(config: dict[str, Any], storage: str) -> None:
    """A sweep trial's shape (weldray.sweep.run.run_trial) around a trivial per-worker loop."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from weldray.sweep.run import _report_callback

    def loop(cfg: dict[str, Any]) -> None:
        import ray.train

        for epoch in range(3):
            time.sleep(0.5)
            ray.train.report({"epoch": epoch, "val_loss_best": cfg["x"] + 1.0 / (epoch + 1)})

    TorchTrainer(
        loop,
        train_loop_config=config,
        # The CPUs a weldray trial's worker takes on 2 cores (training.data_cpus=0.5 left for Ray Data).
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1.5}),
        run_config=RunConfig(
            name=tune.get_context().get_trial_name(), storage_path=storage, callbacks=[_report_callback()]
        ),
    ).fit()


@pytest.mark.slow  # four Tune trials in a row, ~2 min
def test_asha_stops_four_trials_in_a_row_and_frees_their_placement_groups(ray_local: None, tmp_path: Path) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from weldray.sweep.run import TIME_ATTR, TRIAL_MEMORY, trial_name

    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, storage=str(tmp_path / "train")),
                            {"CPU": 0, "memory": TRIAL_MEMORY}),
        # Trial x=0 is best; every later one is worse at the first rung and is stopped there.
        param_space={"x": tune.grid_search([0, 1, 2, 3, 4])},
        tune_config=tune.TuneConfig(
            metric="val_loss_best",
            mode="min",
            scheduler=ASHAScheduler(time_attr=TIME_ATTR, max_t=3, grace_period=1, reduction_factor=2),
            max_concurrent_trials=1,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    t0 = time.monotonic()
    grid = tuner.fit()
    assert time.monotonic() - t0 < 300, "trials waited for resources"
    epochs = {r.config["x"]: r.metrics[TIME_ATTR] for r in grid}
    assert grid.num_errors == 0
    assert epochs == {0: 3, 1: 1, 2: 1, 3: 1, 4: 1}
    assert all(Path(r.path).name.startswith("trial-") for r in grid)
    # Ray Train's cleaner removes a dead controller's group within a few seconds.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = [p for p in ray.util.placement_group_table().values() if p["state"] != "REMOVED"]
        if not live:
            break
        time.sleep(1)
    assert not live, f"placement groups left behind: {live}"


def test_trials_at_once_follow_the_cluster(ray_local: None) -> None:
    from weldray.config import load_config
    from weldray.sweep.run import max_concurrent
    from weldray.sweep.space import load_space

    # 2 CPUs: a trial's worker (1.5 CPUs, quick_test) and its Ray Data tasks (0.5) fill the machine.
    full = load_space("smoke", ["training.cpus_per_worker=1.5"])
    assert max_concurrent(full, load_config(full.overrides)) == 1
    # smoke.yaml as shipped: half a CPU for the worker and half for Ray Data, two trials at once.
    study = load_space("smoke")
    assert max_concurrent(study, load_config(study.overrides)) == 2
    fixed = load_space("smoke", ["sweep.max_concurrent=3"])
    assert max_concurrent(fixed, load_config(fixed.overrides)) == 3
