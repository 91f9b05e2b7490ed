"""Training recipe (``training.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError, check_choice, check_fraction, check_positive

OPTIMIZERS = ("adamw", "ranger21")


@dataclass
class TrainingConfig:
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-3
    # Discriminative LR: backbone lr = lr * backbone_lr_mult.
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mixup_prob: float = 0.5
    # Progressive resizing: image size per phase, phases split the epochs evenly.
    image_sizes: list[int] = field(default_factory=lambda: [192, 224])
    class_weighting: bool = True
    early_stopping_patience: int = 5
    # Ray Train scaling.
    num_workers: int = 1
    # "auto": GPU when the cluster has one.
    use_gpu: str = "auto"
    cpus_per_worker: float = 2.0
    max_failures: int = 2
    # Cross-validation fold held out for validation (None: the manifest's val split).
    cv_fold: Optional[int] = None
    # Fraction of real images per batch when synthetic data is mixed in (1.0 = real only).
    mix_real_ratio: float = 1.0
    run_name: Optional[str] = None
    tta: bool = False
    log_tensorboard: bool = True
    log_mlflow: bool = False

    def __post_init__(self) -> None:
        check_positive("training.epochs", self.epochs)
        check_positive("training.batch_size", self.batch_size)
        check_positive("training.lr", self.lr)
        check_positive("training.backbone_lr_mult", self.backbone_lr_mult)
        check_positive("training.weight_decay", self.weight_decay, allow_zero=True)
        check_choice("training.optimizer", self.optimizer, OPTIMIZERS)
        check_positive("training.warmup_epochs", self.warmup_epochs, allow_zero=True)
        check_fraction("training.label_smoothing", self.label_smoothing)
        check_positive("training.mixup_alpha", self.mixup_alpha, allow_zero=True)
        check_positive("training.cutmix_alpha", self.cutmix_alpha, allow_zero=True)
        check_fraction("training.mixup_prob", self.mixup_prob, inclusive_high=True)
        if not self.image_sizes or any(s < 32 or s % 8 for s in self.image_sizes):
            raise ConfigError("training.image_sizes", f"needs sizes that are multiples of 8, >= 32: {self.image_sizes}")
        check_positive("training.num_workers", self.num_workers)
        check_choice("training.use_gpu", self.use_gpu, ("auto", "true", "false"))
        check_positive("training.cpus_per_worker", self.cpus_per_worker)
        check_positive("training.max_failures", self.max_failures, allow_zero=True)
        check_fraction("training.mix_real_ratio", self.mix_real_ratio, inclusive_high=True)
        if self.mix_real_ratio == 0:
            raise ConfigError("training.mix_real_ratio", "must be > 0: a batch needs real images")
