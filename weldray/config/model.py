"""Classifier architecture (``model.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from weldray.config._base import ConfigError, check_choice, check_fraction, check_positive

HEADS = ("arcface", "cosface", "softmax")


@dataclass
class ModelConfig:
    # Any timm model name, optionally with a pretrained tag (``convnextv2_nano.fcmae_ft_in22k_in1k_384``).
    backbone: str = "efficientnet_lite0"
    # True: resolve weights (model.weights file -> hub when online -> pip-shipped); False: random init.
    pretrained: bool = True
    # A local weights file (state dict, .pth/.safetensors); wins over every other source.
    weights: Optional[str] = None
    head: str = "softmax"
    embedding_dim: int = 512
    scale: float = 30.0
    margin: float = 0.5
    drop_path_rate: float = 0.1
    drop_rate: float = 0.2
    # Number of early backbone stages kept frozen (0 = train everything).
    freeze_stages: int = 0
    # Evaluation / export input size (square). Shared by evaluation, export and serving.
    image_size: int = 288

    def __post_init__(self) -> None:
        if not self.backbone:
            raise ConfigError("model.backbone", "must name a timm model")
        check_choice("model.head", self.head, HEADS)
        check_positive("model.embedding_dim", self.embedding_dim)
        check_positive("model.scale", self.scale)
        if not 0.0 <= self.margin < 1.6:
            raise ConfigError("model.margin", f"must be in [0, 1.6) radians/cosine units, got {self.margin}")
        check_fraction("model.drop_path_rate", self.drop_path_rate)
        check_fraction("model.drop_rate", self.drop_rate)
        check_positive("model.freeze_stages", self.freeze_stages, allow_zero=True)
        if self.image_size < 32 or self.image_size % 8:
            raise ConfigError("model.image_size", f"must be a multiple of 8 and >= 32, got {self.image_size}")
