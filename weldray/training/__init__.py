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
}

__all__ = ["cross_validate", "scaling_plan", "train"]

if TYPE_CHECKING:
    from weldray.training.cv import cross_validate
    from weldray.training.trainer import scaling_plan, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weldray.training' has no attribute {name!r}")
