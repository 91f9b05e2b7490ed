"""Self-supervised DINO warm-up of the classifier's backbone (``pretrain.*``): ``weldray pretrain``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError, check_fraction, check_positive

#: The student's softmax temperature (DINO's 0.1); the teacher's must be lower: that is the sharpening.
STUDENT_TEMP = 0.1


def _check_scale(key: str, value: list[float]) -> None:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= 1.0:
        raise ConfigError(key, f"must be [min, max] with 0 < min <= max <= 1 (share of the image area), got {value}")


@dataclass
class PretrainConfig:
    epochs: int = 10
    # Images per worker and step (each gives 2 global + n_local_crops local views).
    batch_size: int = 16
    # AdamW peak learning rate of the student (backbone and head): linear warmup, then cosine to 1 %. On procedural
    # welds from ImageNet Lite0 the DINO loss fell at 1e-3 and stayed flat at 1e-4 over a few epochs.
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_epochs: float = 1.0
    # Multi-crop views (lightly's DINOTransform): 2 global crops (the teacher sees these) and n_local_crops
    # local ones (the student sees all), each a random resized crop of scale [min, max] of the image area.
    global_crop_size: int = 224
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crop_size: int = 96
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    n_local_crops: int = 6
    # DINO projection head (lightly's DINOProjectionHead): MLP hidden and bottleneck widths, prototypes (out_dim).
    hidden_dim: int = 512
    bottleneck_dim: int = 64
    out_dim: int = 2048
    # Epochs during which the head's last layer stays fixed (DINO: 1 of 100+ for stability; a short warm-up
    # from pretrained weights learnt more with it free from the start).
    freeze_last_layer_epochs: int = 0
    # Teacher = EMA of the student; its momentum follows a cosine from momentum_start to momentum_end per step.
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    # Teacher softmax temperature (sharpening; below the student's 0.1), linearly from warmup_teacher_temp over
    # the first warmup_teacher_temp_epochs epochs. Centering: lightly's DINOLoss (moving mean, momentum 0.9).
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    # More unlabelled images: folders (or s3:// prefixes) whose images, at any depth, join DATA's photos.
    extra_data: list[str] = field(default_factory=list)
    # A `weldray generate` output whose accepted images join too (lineage-checked against the photos used).
    synthetic_data: Optional[str] = None
    # Run folder name under <output_dir>/pretrain/; the same name resumes. None: timestamp + config hash.
    run_name: Optional[str] = None

    def __post_init__(self) -> None:
        check_positive("pretrain.epochs", self.epochs)
        if self.batch_size < 2:
            raise ConfigError("pretrain.batch_size", f"must be >= 2 (centering needs a batch), got {self.batch_size}")
        check_positive("pretrain.lr", self.lr)
        check_positive("pretrain.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("pretrain.warmup_epochs", self.warmup_epochs, allow_zero=True)
        if self.global_crop_size < 32:
            raise ConfigError("pretrain.global_crop_size", f"must be >= 32, got {self.global_crop_size}")
        if not 16 <= self.local_crop_size <= self.global_crop_size:
            raise ConfigError(
                "pretrain.local_crop_size",
                f"must be in [16, pretrain.global_crop_size={self.global_crop_size}], got {self.local_crop_size}",
            )
        _check_scale("pretrain.global_crop_scale", self.global_crop_scale)
        _check_scale("pretrain.local_crop_scale", self.local_crop_scale)
        check_positive("pretrain.n_local_crops", self.n_local_crops, allow_zero=True)
        check_positive("pretrain.hidden_dim", self.hidden_dim)
        check_positive("pretrain.bottleneck_dim", self.bottleneck_dim)
        check_positive("pretrain.out_dim", self.out_dim)
        check_positive("pretrain.freeze_last_layer_epochs", self.freeze_last_layer_epochs, allow_zero=True)
        check_fraction("pretrain.momentum_start", self.momentum_start, inclusive_high=True)
        check_fraction("pretrain.momentum_end", self.momentum_end, inclusive_high=True)
        if self.momentum_end < self.momentum_start:
            raise ConfigError(
                "pretrain.momentum_end",
                f"must be >= pretrain.momentum_start={self.momentum_start}, got {self.momentum_end}",
            )
        for key in ("teacher_temp", "warmup_teacher_temp"):
            value = getattr(self, key)
            if not 0.0 < value < STUDENT_TEMP:
                raise ConfigError(
                    f"pretrain.{key}",
                    f"must be in (0, {STUDENT_TEMP}): below the student's temperature, so the teacher's targets are "
                    f"sharper; got {value}",
                )
        check_positive("pretrain.warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs, allow_zero=True)
        if any(not p for p in self.extra_data):
            raise ConfigError("pretrain.extra_data", f"must be a list of folders, got {self.extra_data}")
        if self.synthetic_data is not None and not self.synthetic_data:
            raise ConfigError("pretrain.synthetic_data", "must be null or a `weldray generate` output folder")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name):
            raise ConfigError("pretrain.run_name", f"must be a plain folder name, got {self.run_name!r}")
