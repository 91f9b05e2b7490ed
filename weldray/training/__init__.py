"""Classifier training on Ray Train. ``train(cfg) -> run directory``; ``cross_validate(cfg)``.

Attributes load lazily so that ``weldray --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "cross_validate": "weldray.training.cv",
    "scaling_plan": "weldray.training.trainer",
    "train": "weldray.training.trainer",
    "train_seed_ensemble": "weldray.training.cv",
}

__all__ = ["cross_validate", "scaling_plan", "train", "train_seed_ensemble"]

if TYPE_CHECKING:
    from weldray.training.cv import cross_validate, train_seed_ensemble
    from weldray.training.trainer import scaling_plan, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weldray.training' has no attribute {name!r}")
