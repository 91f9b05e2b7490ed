"""Running a study on Ray Tune: one function trainable per trial that fits the Ray Train TorchTrainer of a
plain ``weldray train`` config (Train V2: the trainer is built inside the trial, never handed to the Tuner),
OptunaSearch (seeded TPE) and ASHA, resumable by name."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from weldray.config import ConfigError, WeldrayConfig, load_config
from weldray.ray_utils import scoped_environ
from weldray.sweep.space import Study

log = logging.getLogger(__name__)

#: What the Tuner records per trial besides the loop's own metrics: epochs finished (ASHA's time attribute).
TIME_ATTR = "epochs_done"
TUNE_DIR = "tune"
#: Memory reserved for a trial's driver (the function trainable that runs ``train``), bytes.
TRIAL_MEMORY = 512 * 1024**2
#: Seconds between saves of Tune's experiment state (Tune's own period: 10 s or more). A continued sweep re-runs a
#: trial that had finished after the last save; the save (a few small files) costs milliseconds.
EXPERIMENT_SAVE_S = "1"


def sweep_dir_for(study: Study, root: Path | None = None) -> Path:
    """``<root>/<name>``; ``root`` defaults to ``<output_dir>/sweeps``."""
    root = root if root is not None else Path(load_config(study.overrides).output_dir) / "sweeps"
    return root.resolve() / study.name


def trial_name(trial: Any) -> str:
    """``trial-<id>``: the name of the trial, of its folder and of its Ray Train run (dashboard Train page)."""
    return f"trial-{trial.trial_id}"


def trial_config(study: Study, params: dict[str, Any], sweep_dir: Path, data_root: str, name: str) -> WeldrayConfig:
    """A trial's ``weldray train`` config: the study's fixed overrides, its sampled values, validation rows held
    out (what the trial is judged on), its run under ``<sweep_dir>/runs/<name>``."""
    return load_config(
        [
            *study.trial_overrides(params),
            f"data.root={data_root}",
            f"output_dir={sweep_dir}",
            f"training.run_name={name}",
            "training.holdout=true",
        ]
    )


def _report_callback() -> Any:
    """Ray Tune's callback for Train V2 runs inside a trial, adding ``epochs_done`` (the loop counts epochs
    from 0, and Tune's own ``training_iteration`` restarts when a resumed Train run continues its epochs)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            rank0 = {**metrics[0], TIME_ATTR: metrics[0]["epoch"] + 1}
            super().after_report(run_context, [rank0, *metrics[1:]], checkpoint)

    return EpochReport()


def run_trial(params: dict[str, Any], *, study: Study, sweep_dir: str, data_root: str) -> None:
    """The function trainable: one ``weldray train`` run whose rank-0 metrics reach Tune once per epoch."""
    from ray import tune

    from weldray.training.trainer import train

    name = tune.get_context().get_trial_name()
    cfg = trial_config(study, params, Path(sweep_dir), data_root, name)
    # The Train run is named after the trial (training.run_name); its labels show which sweep and values it is.
    labels = {"sweep": study.name, "trial": name, **params}
    train(cfg, callbacks=[_report_callback()], progress=False, run_labels=labels)  # progress: Tune's table


def max_concurrent(study: Study, cfg: WeldrayConfig) -> int:
    """Trials (and confirmation runs) at once: ``sweep.max_concurrent``, else as many training runs as the cluster
    holds (:func:`weldray.training.trainer.runs_at_once`)."""
    from weldray.training.trainer import runs_at_once

    return study.sweep.max_concurrent or runs_at_once(cfg)


def _searcher(study: Study, concurrent: int) -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # constant_liar: concurrent trials see the running ones as bad results, so they do not all sample one spot.
    sampler = optuna.samplers.TPESampler(seed=study.sweep.seed, constant_liar=concurrent > 1)
    storage = optuna.storages.RDBStorage(study.sweep.storage) if study.sweep.storage else None
    return OptunaSearch(
        space={k: d.optuna_distribution() for k, d in study.space.items()},
        metric=study.sweep.metric,
        mode=study.sweep.mode,
        sampler=sampler,
        study_name=study.name,
        storage=storage,
    )


def max_epochs(study: Study) -> int:
    """The longest a trial can train (ASHA's max_t)."""
    epochs = load_config(study.overrides).training.epochs
    dist = study.space.get("training.epochs")
    return max(epochs, *(int(v) for v in dist.extremes())) if dist else epochs


def _scheduler(study: Study) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    if study.sweep.scheduler == "none":
        return None
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=max_epochs(study),
        grace_period=study.sweep.grace_period,
        reduction_factor=study.sweep.reduction_factor,
    )


def study_record(study: Study, data_root: str) -> dict[str, Any]:
    """What makes two runs of ``weldray sweep`` the same sweep (the name alone resumes it). The trackers count:
    a continued Tuner keeps the callbacks it started with."""
    sweep = {k: v for k, v in asdict(study.sweep).items() if k not in ("top_k", "confirm_folds")}
    for tracker in ("wandb", "mlflow"):  # only when on: sweeps recorded before the trackers existed continue
        if not sweep[tracker]["enabled"]:
            del sweep[tracker]
    return {
        "space_file": study.path.name,
        "space": {k: asdict(d) for k, d in study.space.items()},
        "overrides": study.overrides,
        "sweep": sweep,
        "data_root": data_root,
    }


def check_same_study(sweep_dir: Path, record: dict[str, Any]) -> None:
    """A sweep folder holds one study: re-running with other settings under the same name is refused (the
    restored Tuner would silently keep the old ones)."""
    path = sweep_dir / "study.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = sorted(k for k in record if old.get(k) != record[k])
    if changed:
        raise ConfigError(
            "sweep.name",
            f"{sweep_dir} holds a sweep with other {', '.join(changed)}; re-run it unchanged to continue it, or "
            "choose another sweep.name",
        )


def run_search(study: Study, data_root: str, sweep_dir: Path, callbacks: list[Any] | None = None) -> Any:
    """Run (or continue) the Tuner; returns its ResultGrid. Ray must be initialised. ``callbacks``: Tune's
    (the trackers, :mod:`weldray.sweep.tracking`); a continued sweep keeps those it started with."""
    import ray
    from ray import tune

    cfg = load_config([*study.overrides, f"data.root={data_root}"])
    concurrent = max_concurrent(study, cfg)
    exp_dir = sweep_dir / TUNE_DIR
    # No CPU for the trial itself: its Train workers and Ray Data tasks hold the CPUs (even a fraction of a CPU
    # for the trial leaves a 2-core machine short of the data tasks' half CPU). Tune needs some resource in the
    # trial's bundle: the memory the trial's driver process uses.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=study, sweep_dir=str(sweep_dir), data_root=data_root),
        {"CPU": 0, "memory": TRIAL_MEMORY},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    if tune.Tuner.can_restore(str(exp_dir)):
        log.info("continuing sweep %s from %s", study.name, exp_dir)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        log.info("sweep %s: %d trials, %d at a time, scheduler %s", study.name, study.sweep.num_samples,
                 concurrent, study.sweep.scheduler)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=study.sweep.metric,
                mode=study.sweep.mode,
                search_alg=_searcher(study, concurrent),
                scheduler=_scheduler(study),
                num_samples=study.sweep.num_samples,
                max_concurrent_trials=concurrent,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(sweep_dir),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=callbacks,
                verbose=1,
            ),
        )
    with scoped_environ(TUNE_GLOBAL_CHECKPOINT_S=os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_SAVE_S)):
        return tuner.fit()
