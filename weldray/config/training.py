"""Training recipe (``training.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from weldray.config._base import ConfigError, check_choice, check_fraction, check_positive

OPTIMIZERS = ("adamw", "ranger21")


@dataclass
class TrainingConfig:
    epochs: int = 24
    batch_size: int = 16
    lr: float = 1e-3
    # Discriminative LR: backbone lr = lr * backbone_lr_mult.
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: float = 1.0
    # Linear probe, then fine-tune (fastai's fine_tune, Kumar et al. 2022): the first freeze_epochs train only the
    # embedding and head (the backbone's lr is 0), so the randomly initialised head does not send large gradients
    # into the ImageNet features; then the backbone warms up and follows the cosine schedule. 0 = off.
    freeze_epochs: int = 0
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    mixup_prob: float = 0.0
    # Progressive resizing: image size per phase, phases split the epochs evenly.
    image_sizes: list[int] = field(default_factory=lambda: [288])
    class_weighting: bool = False
    early_stopping_patience: int = 0
    # Exponential moving average of the weights (timm ModelEmaV3, warmed up); validation, the best
    # checkpoint and the exported model use the averaged weights. 0 = off.
    ema_decay: float = 0.0
    # Ray Train scaling.
    num_workers: int = 1
    # "auto": GPU when the cluster has one.
    use_gpu: str = "auto"
    cpus_per_worker: float = 2.0
    max_failures: int = 2
    # False (default): train on every labelled row (the deployable final fit; with cv_fold, every row
    # outside that fold), epochs fixed, figures and temperature from `weldray cv` out-of-fold predictions.
    # True: hold the manifest's val (and, without cv_fold, test) rows out of training, for quick checks
    # and early stopping.
    holdout: bool = False
    # Cross-validation fold held out as the test set (None: no fold held out).
    cv_fold: int | None = None
    # Share of real images among each epoch's training samples (1.0 = real only; 0.25 = three synthetic per real):
    # every real train row plus round(n_real * (1 - r) / r) accepted synthetic images of training.synthetic_data,
    # drawn once per run in the synthetic pool's class shares. Validation, test, calibration and export checks
    # use real photos only.
    mix_real_ratio: float = 1.0
    # A `weldray generate` output (or a folder of them per scope: fold<k>/, all/, holdout/, as the pipeline
    # writes) for mix_real_ratio < 1. Its images' sources must be this run's train rows (else refused).
    synthetic_data: str | None = None
    run_name: str | None = None
    # Evaluation: 10-view test-time augmentation (reported alongside the single-view figures).
    tta: bool = False
    # Rows evaluated: "auto" = the held-out rows (test split, or the CV fold) when DATA is the
    # training manifest, else every row; or one of "all", "test", "val".
    eval_split: str = "auto"
    # Augmentation in the Ray Data pipeline (random resized crop, flips, rotation, colour jitter).
    augment: bool = True
    # The random resized crop's range of the photo's area that one training view keeps (min, max).
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    # Share of training views cropped around one of the photo's YOLO boxes (the weld bead, or one defect) instead
    # of the random resized crop: a square 1.3-2x the box's longer side (at least 30 % of the photo's), so the
    # bead and its defects fill more of the view. Needs box labels (data.md); photos without boxes keep the
    # random crop. 0 = off.
    box_crop_prob: float = 0.0
    # Torch threads per worker; None = the node's CPUs / num_workers.
    torch_threads: int | None = None
    # CPUs kept free for Ray Data decode/augment tasks (avoids the 2-core Train/Data deadlock).
    data_cpus: float = 0.5
    log_tensorboard: bool = True
    log_mlflow: bool = False
    # MLflow tracking URI when log_mlflow (None: <output_dir>/mlruns, local files, no server or network).
    mlflow_tracking_uri: str | None = None

    def __post_init__(self) -> None:
        check_positive("training.epochs", self.epochs)
        check_positive("training.batch_size", self.batch_size)
        check_positive("training.lr", self.lr)
        check_positive("training.backbone_lr_mult", self.backbone_lr_mult)
        check_positive("training.weight_decay", self.weight_decay, allow_zero=True)
        check_choice("training.optimizer", self.optimizer, OPTIMIZERS)
        check_positive("training.warmup_epochs", self.warmup_epochs, allow_zero=True)
        check_positive("training.freeze_epochs", self.freeze_epochs, allow_zero=True)
        if self.freeze_epochs >= self.epochs:
            raise ConfigError(
                "training.freeze_epochs",
                f"must be below training.epochs ({self.epochs}), or the backbone never trains: {self.freeze_epochs}"
                " (model.freeze_stages freezes it for the whole run)",
            )
        check_fraction("training.label_smoothing", self.label_smoothing)
        check_fraction("training.ema_decay", self.ema_decay)
        check_positive("training.mixup_alpha", self.mixup_alpha, allow_zero=True)
        check_positive("training.cutmix_alpha", self.cutmix_alpha, allow_zero=True)
        check_fraction("training.mixup_prob", self.mixup_prob, inclusive_high=True)
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(
                "training.crop_scale", f"needs [min, max] with 0 < min <= max <= 1 (areas kept): {self.crop_scale}"
            )
        check_fraction("training.box_crop_prob", self.box_crop_prob, inclusive_high=True)
        if not self.image_sizes or any(s < 32 or s % 8 for s in self.image_sizes):
            raise ConfigError("training.image_sizes", f"needs sizes that are multiples of 8, >= 32: {self.image_sizes}")
        check_positive("training.num_workers", self.num_workers)
        check_choice("training.use_gpu", self.use_gpu, ("auto", "true", "false"))
        check_positive("training.cpus_per_worker", self.cpus_per_worker)
        check_positive("training.max_failures", self.max_failures, allow_zero=True)
        check_fraction("training.mix_real_ratio", self.mix_real_ratio, inclusive_high=True)
        check_choice("training.eval_split", self.eval_split, ("auto", "all", "test", "val"))
        if self.torch_threads is not None:
            check_positive("training.torch_threads", self.torch_threads)
        check_positive("training.data_cpus", self.data_cpus, allow_zero=True)
        if self.cv_fold is not None and self.cv_fold < 0:
            raise ConfigError("training.cv_fold", f"must be >= 0 (a fold index), got {self.cv_fold}")
        if not self.holdout and self.early_stopping_patience > 0:
            raise ConfigError(
                "training.early_stopping_patience",
                "needs validation rows held out of training: set training.holdout=true, or fix training.epochs "
                "by cross-validation (`weldray cv`) and keep early_stopping_patience=0",
            )
        if self.mix_real_ratio == 0:
            raise ConfigError("training.mix_real_ratio", "must be > 0: a batch needs real images")
