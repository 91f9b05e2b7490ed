"""Hyperparameter sweeps on Ray Tune + Optuna over ``tune_spaces/*.yaml``: ``run_sweep(space, data, overrides)``.

Attributes load lazily so that ``weldray --help`` does not import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_space": "weldray.sweep.space",
    "run_sweep": "weldray.sweep.driver",
}

__all__ = ["load_space", "run_sweep"]

if TYPE_CHECKING:
    from weldray.sweep.driver import run_sweep
    from weldray.sweep.space import load_space


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weldray.sweep' has no attribute {name!r}")
