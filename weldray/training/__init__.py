"""Classifier training on Ray Train. ``train(cfg) -> run directory``; ``cross_validate(cfg)``."""

from weldray.training.cv import cross_validate
from weldray.training.trainer import scaling_plan, train

__all__ = ["cross_validate", "scaling_plan", "train"]
