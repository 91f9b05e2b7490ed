"""Weld classifier models: timm backbone + embedding + ArcFace/CosFace/softmax head.

Public API: :func:`build_classifier`, :class:`WeldClassifier`, checkpoints
(:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`CheckpointMeta`).
"""

from weldray.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from weldray.models.classifier import WeldClassifier, build_classifier
from weldray.models.heads import LinearHead, MarginHead
from weldray.models.weights import WeightsNotFoundError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointMeta",
    "LinearHead",
    "MarginHead",
    "WeightsNotFoundError",
    "WeldClassifier",
    "build_classifier",
    "load_checkpoint",
    "save_checkpoint",
]
