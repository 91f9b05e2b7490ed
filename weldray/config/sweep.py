"""Hyperparameter sweep settings (``sweep.*``).

Not a group of :class:`~weldray.config.WeldrayConfig`: these keys describe a study, not a run. Each trial is a
plain ``weldray train`` config, so its config hash (and the CV results named after its recipe) must not change
with ``sweep.num_samples``, and ``weldray train`` has no use for them. They are composed separately:
``conf/sweep/default.yaml`` <- the space file's ``sweep:`` block <- ``sweep.key=value`` on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError, check_choice, check_positive

SCHEDULERS = ("asha", "none")


@dataclass
class WandbConfig:
    # Ray Tune's WandbLoggerCallback: one W&B run per trial (sampled values as config, metrics per epoch), in the
    # sweep folder's wandb/. Mode: $WANDB_MODE, offline when unset (`wandb sync` uploads later; online needs
    # the network and an API key).
    enabled: bool = False
    project: str = "weldray"

    def __post_init__(self) -> None:
        if not self.project:
            raise ConfigError("sweep.wandb.project", "must name a W&B project")


@dataclass
class MlflowConfig:
    # Ray Tune's MLflowLoggerCallback: one MLflow run per trial (sampled values as params, metrics per epoch) in
    # the experiment named after the sweep.
    enabled: bool = False
    # None: file:<sweep folder>/mlruns (local files, no server); any MLflow URI, e.g. sqlite:///mlflow.db.
    tracking_uri: Optional[str] = None


@dataclass
class SweepConfig:
    # Folder name under <output_dir>/sweeps/; None: the space file's name. The same name resumes the sweep.
    name: Optional[str] = None
    # Trials Optuna proposes in all (a resumed sweep counts the ones already run).
    num_samples: int = 8
    # What a trial reports once per epoch and the search optimises: a best-so-far figure on the trial's
    # validation rows (val_loss_best, val_bal_acc_best), comparable between trials ASHA stopped at different epochs.
    metric: str = "val_loss_best"
    mode: str = "min"
    # "asha": stop the worse trials at epochs grace_period, grace_period*reduction_factor, ...; "none": run all.
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    # TPE sampler seed: the same seed and results propose the same parameters.
    seed: int = 0
    # Best trials re-evaluated by k-fold group cross-validation together with the default config (0: none).
    top_k: int = 3
    # Folds of that cross-validation; None: all data.n_folds.
    confirm_folds: Optional[list[int]] = None
    # Optuna storage URL (e.g. sqlite:///outputs/sweeps/optuna.db, readable by optuna-dashboard); None: in memory,
    # kept in Tune's experiment state.
    storage: Optional[str] = None
    # Trials run at once; None: as many as the cluster's CPUs fit (each trial's Train workers plus its data CPUs).
    max_concurrent: Optional[int] = None
    # Experiment trackers, off by default, neither needing the network unless told to.
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name):
            raise ConfigError("sweep.name", f"must be a plain folder name, got {self.name!r}")
        check_positive("sweep.num_samples", self.num_samples)
        if not self.metric:
            raise ConfigError("sweep.metric", "must name a reported metric, e.g. val_loss_best")
        check_choice("sweep.mode", self.mode, ("min", "max"))
        check_choice("sweep.scheduler", self.scheduler, SCHEDULERS)
        check_positive("sweep.grace_period", self.grace_period)
        if self.reduction_factor < 2:
            raise ConfigError("sweep.reduction_factor", f"must be >= 2, got {self.reduction_factor}")
        check_positive("sweep.top_k", self.top_k, allow_zero=True)
        if self.confirm_folds is not None and (len(self.confirm_folds) < 2 or min(self.confirm_folds) < 0):
            raise ConfigError(
                "sweep.confirm_folds",
                f"must be null or 2+ fold indices (a paired comparison needs 2+ folds), got {self.confirm_folds}",
            )
        if self.storage is not None and "://" not in self.storage:
            raise ConfigError("sweep.storage", f"must be an Optuna storage URL (sqlite:///x.db), got {self.storage!r}")
        if self.max_concurrent is not None:
            check_positive("sweep.max_concurrent", self.max_concurrent)
