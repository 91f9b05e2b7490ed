"""The end-to-end pipeline (``pipeline.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError

STAGES = ("clean", "ingest", "generate", "pretrain", "sweep", "train", "evaluate", "export")
#: What runs unless pipeline.stages says otherwise: every stage but the (long, optional) hyperparameter sweep.
DEFAULT_STAGES = tuple(s for s in STAGES if s != "sweep")


@dataclass
class PipelineConfig:
    # Run directory name under <output_dir>/pipelines/; None -> "<dataset>-<profile>", so re-running the
    # same command resumes it and skips the stages whose inputs did not change.
    run_name: Optional[str] = None
    # Stages to run, in pipeline order; e.g. [train] re-runs a failed stage alone. `sweep` (off by default) runs
    # the space file pipeline.sweep_space on the ingested data before train, which then uses its best.yaml.
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    # Re-run the selected stages even when their recorded inputs are unchanged.
    force: bool = False
    # The optional DINO warm-up of the backbone (`weldray pretrain`, ``pretrain.*``) before train, which then
    # starts from its weights (model.weights). Off by default.
    pretrain: bool = False
    # Cross-validation folds the train stage runs before the final fit (their out-of-fold predictions give
    # the evaluation figures and the temperature); None: all data.n_folds.
    cv_folds: Optional[list[int]] = None
    # The sweep stage's space file (`weldray sweep`'s SPACE: a name in tune_spaces/ or a path); needed when
    # `sweep` is in pipeline.stages. Its trials also get this command's overrides.
    sweep_space: Optional[str] = None
    # sweep.* settings of that sweep, e.g. [sweep.num_samples=8, sweep.top_k=2] (its name is the stage's own).
    sweep_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError("pipeline.stages", f"must be a non-empty subset of {list(STAGES)}, got {self.stages}")
        if self.cv_folds is not None and (not self.cv_folds or min(self.cv_folds) < 0):
            raise ConfigError(
                "pipeline.cv_folds", f"must be null or a non-empty list of fold indices, got {self.cv_folds}"
            )
        if "sweep" in self.stages and not self.sweep_space:
            raise ConfigError(
                "pipeline.sweep_space", "the sweep stage needs a space file (a name in tune_spaces/ or a path)"
            )
        for item in self.sweep_overrides:
            if not item.startswith("sweep.") or "=" not in item or item.startswith("sweep.name="):
                raise ConfigError(
                    "pipeline.sweep_overrides",
                    f"items must be sweep.key=value settings other than sweep.name (the stage names its sweep), "
                    f"got {item!r}",
                )
        if self.run_name is not None and (not self.run_name or "/" in self.run_name):
            raise ConfigError("pipeline.run_name", f"must be a plain folder name, got {self.run_name!r}")
