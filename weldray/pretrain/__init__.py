"""Self-supervised DINO warm-up of the classifier's backbone on Ray Train. ``pretrain(cfg) -> run directory``
holding ``backbone.safetensors``, which training takes with ``model.weights=``.

Attributes load lazily so that ``weldray --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "preflight": "weldray.pretrain.trainer",
    "pretrain": "weldray.pretrain.trainer",
}

__all__ = ["preflight", "pretrain"]

if TYPE_CHECKING:
    from weldray.pretrain.trainer import preflight, pretrain


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weldray.pretrain' has no attribute {name!r}")
