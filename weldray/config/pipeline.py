"""The end-to-end pipeline (``pipeline.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError

STAGES = ("clean", "ingest", "generate", "pretrain", "train", "evaluate", "export")


@dataclass
class PipelineConfig:
    # Run directory name under <output_dir>/pipelines/; None -> "<dataset>-<profile>", so re-running the
    # same command resumes it and skips the stages whose inputs did not change.
    run_name: Optional[str] = None
    # Stages to run, in pipeline order; e.g. [train] re-runs a failed stage alone.
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    # Re-run the selected stages even when their recorded inputs are unchanged.
    force: bool = False
    # The optional DINO warm-up of the backbone (`weldray pretrain`, ``pretrain.*``) before train, which then
    # starts from its weights (model.weights). Off by default.
    pretrain: bool = False
    # Cross-validation folds the train stage runs before the final fit (their out-of-fold predictions give
    # the evaluation figures and the temperature); None: all data.n_folds.
    cv_folds: Optional[list[int]] = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError("pipeline.stages", f"must be a non-empty subset of {list(STAGES)}, got {self.stages}")
        if self.cv_folds is not None and (not self.cv_folds or min(self.cv_folds) < 0):
            raise ConfigError(
                "pipeline.cv_folds", f"must be null or a non-empty list of fold indices, got {self.cv_folds}"
            )
        if self.run_name is not None and (not self.run_name or "/" in self.run_name):
            raise ConfigError("pipeline.run_name", f"must be a plain folder name, got {self.run_name!r}")
