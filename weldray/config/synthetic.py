"""Synthetic weld images (``synthetic.*``): the generate stage, its quality gate and the diffusion generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError, check_choice, check_fraction, check_positive

GENERATORS = ("none", "copy_paste", "sdxl_turbo")
BASE_MODELS = ("turbo", "base")
#: Sampling steps each base model is made for: turbo is distilled to 1-4 steps, SDXL base needs more.
MAX_INFERENCE_STEPS = {"turbo": 4, "base": 50}
#: Classifier-free guidance of SDXL base when synthetic.guidance_scale is null (turbo samples without guidance).
BASE_GUIDANCE_SCALE = 5.0


@dataclass
class SyntheticConfig:
    # none (no generate stage) | copy_paste (CPU: real Defect patches Poisson-blended onto good photos) |
    # sdxl_turbo (LoRA SDXL-Turbo + ControlNet Tile img2img; GPU clusters).
    generator: str = "copy_paste"
    # Synthetic images made per class (before the quality gate). Sources of a class are cycled, each
    # (source, seed) pair once, so a resumed run continues where it stopped.
    n_per_class: int = 200
    seed: int = 0
    # copy_paste jitter: patch scale factor range, rotation (+- degrees), per-channel colour gain and contrast
    # (+- fraction). Poisson blending keeps gradients, not levels: gains and contrast scale them, so both show.
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.3])
    max_rotation_deg: float = 20.0
    color_jitter: float = 0.15
    contrast_jitter: float = 0.15
    # Patches pasted per synthetic image (at most; at least one).
    max_patches: int = 2
    # copy_paste: YOLO box classes (data.yaml names) of defects (patches for bad images) and of weld beads
    # (where patches go on the good photos, and where good-bead patches come from). The intended labels follow
    # data.yolo_label_rule (a defect box makes its label) and data.yolo_default_label (good).
    defect_box_classes: list[str] = field(default_factory=lambda: ["Defect"])
    weld_box_classes: list[str] = field(default_factory=lambda: ["Good Weld"])
    # Quality gate: a teacher (logistic regression on frozen backbone features, fitted on the very rows the
    # training of this config trains on) keeps an image only when it assigns the intended class with at least
    # this probability; 0 = keep all. Near-duplicates of real photos (data.hash_method within
    # data.near_duplicate_distance bits) are always dropped.
    min_teacher_confidence: float = 0.5
    # Ray Data actor pool. Fractional CPUs: whole-CPU actors starve the read tasks on small machines.
    concurrency: int = 2
    num_cpus_per_actor: float = 0.5
    num_gpus_per_actor: float = 0.0
    batch_size: int = 4
    contact_sheet_size: int = 16
    jpeg_quality: int = 95
    # --- sdxl_turbo (weldray.synthetic.diffusion) ---
    # Local folder or hub id (hub ids only when online; nothing downloads in tests).
    sdxl_model: str = "stabilityai/sdxl-turbo"
    controlnet_model: str = "xinsir/controlnet-tile-sdxl-1.0"
    # turbo: distilled few-step model; base: SDXL base (LoRA on a distilled model can blur its few-step output).
    base_model: str = "turbo"
    # LoRA weights (diffusers format) written by `weldray train-lora`; None = the base model alone. Its
    # train_log.json must name the photos it saw, all among the generate run's source rows (lineage).
    lora_path: Optional[str] = None
    # Fine-tune the LoRA inside the generate job, on exactly its own source rows (OUTPUT/_synthetic/lora/): the
    # pipeline's generate stage then gets one LoRA per training it feeds (each CV fold, the final fit), which no
    # single lora_path can serve without leaking a held-out fold. sdxl_turbo only; instead of lora_path.
    train_lora: bool = False
    lora_rank: int = 8
    lora_lr: float = 1e-4
    lora_steps: int = 500
    # turbo: 1-4; base: 1-50. img2img denoises int(num_inference_steps * strength) of them (at least 1).
    num_inference_steps: int = 2
    # img2img strength: how far from the source photo (0 = copy, 1 = ignore it).
    strength: float = 0.5
    # Classifier-free guidance. base: null = 5.0; turbo is distilled to sample without it, so only null or 0.
    guidance_scale: Optional[float] = None
    controlnet_conditioning_scale: float = 0.8
    image_size: int = 512

    @property
    def sampling_guidance_scale(self) -> float:
        """The guidance generation uses: 0 for turbo, ``guidance_scale`` (null: 5.0) for base."""
        if self.base_model == "turbo":
            return 0.0
        return BASE_GUIDANCE_SCALE if self.guidance_scale is None else self.guidance_scale

    def __post_init__(self) -> None:
        check_choice("synthetic.generator", self.generator, GENERATORS)
        check_positive("synthetic.n_per_class", self.n_per_class)
        check_positive("synthetic.seed", self.seed, allow_zero=True)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError("synthetic.scale_range", f"needs [low, high], 0 < low <= high: {self.scale_range}")
        if not 0 <= self.max_rotation_deg <= 180:
            raise ConfigError("synthetic.max_rotation_deg", f"must be in [0, 180], got {self.max_rotation_deg}")
        check_fraction("synthetic.color_jitter", self.color_jitter)
        check_fraction("synthetic.contrast_jitter", self.contrast_jitter)
        check_positive("synthetic.max_patches", self.max_patches)
        for key in ("defect_box_classes", "weld_box_classes"):
            if not getattr(self, key):
                raise ConfigError(f"synthetic.{key}", "needs at least one YOLO box class name")
        check_fraction("synthetic.min_teacher_confidence", self.min_teacher_confidence, inclusive_high=True)
        check_positive("synthetic.concurrency", self.concurrency)
        check_positive("synthetic.num_cpus_per_actor", self.num_cpus_per_actor)
        check_positive("synthetic.num_gpus_per_actor", self.num_gpus_per_actor, allow_zero=True)
        check_positive("synthetic.batch_size", self.batch_size)
        check_positive("synthetic.contact_sheet_size", self.contact_sheet_size, allow_zero=True)
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("synthetic.jpeg_quality", f"must be in [1, 100], got {self.jpeg_quality}")
        for key in ("sdxl_model", "controlnet_model"):
            if not getattr(self, key):
                raise ConfigError(f"synthetic.{key}", "needs a local folder or a hub id")
        check_choice("synthetic.base_model", self.base_model, BASE_MODELS)
        if self.lora_path is not None and not self.lora_path:
            raise ConfigError("synthetic.lora_path", "must be null or a path")
        if self.train_lora and self.generator != "sdxl_turbo":
            raise ConfigError(
                "synthetic.train_lora", f"needs generator=sdxl_turbo (a LoRA of SDXL), not {self.generator}"
            )
        if self.train_lora and self.lora_path is not None:
            raise ConfigError(
                "synthetic.train_lora",
                f"trains the job's own LoRA; it cannot also use synthetic.lora_path={self.lora_path} (set one)",
            )
        check_positive("synthetic.lora_rank", self.lora_rank)
        check_positive("synthetic.lora_lr", self.lora_lr)
        check_positive("synthetic.lora_steps", self.lora_steps)
        max_steps = MAX_INFERENCE_STEPS[self.base_model]
        if not 1 <= self.num_inference_steps <= max_steps:
            raise ConfigError(
                "synthetic.num_inference_steps",
                f"must be in [1, {max_steps}] for base_model={self.base_model}, got {self.num_inference_steps}",
            )
        if not 0 < self.strength <= 1:
            raise ConfigError("synthetic.strength", f"must be in (0, 1], got {self.strength}")
        if int(self.num_inference_steps * self.strength) < 1:
            # diffusers would refuse the 0 steps deep inside a worker.
            raise ConfigError(
                "synthetic.strength",
                f"strength {self.strength} x num_inference_steps {self.num_inference_steps} must be >= 1 (img2img "
                "runs int(steps * strength) denoising steps)",
            )
        if self.guidance_scale is not None:
            check_positive("synthetic.guidance_scale", self.guidance_scale, allow_zero=True)
            if self.base_model == "turbo" and self.guidance_scale != 0:
                raise ConfigError(
                    "synthetic.guidance_scale",
                    f"base_model=turbo samples without classifier-free guidance: null or 0, got {self.guidance_scale}",
                )
        check_positive("synthetic.controlnet_conditioning_scale", self.controlnet_conditioning_scale, allow_zero=True)
        if self.image_size < 64 or self.image_size % 8:
            raise ConfigError("synthetic.image_size", f"must be a multiple of 8, >= 64, got {self.image_size}")
