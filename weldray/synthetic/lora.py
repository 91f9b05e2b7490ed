"""LoRA fine-tuning of the SDXL(-Turbo) UNet on real weld photos (``weldray train-lora``).

Standard diffusers recipe: frozen VAE and text encoders, peft LoRA adapters on the UNet's attention projections,
noise-prediction MSE on VAE latents with SDXL's micro-conditioning (original size, crop, target size) and the
pooled text embedding. One LoRA serves both classes: each photo's caption is its class prompt
(:data:`weldray.synthetic.diffusion.CLASS_PROMPTS`), the same prompt generation uses. Saved in diffusers LoRA
format, so ``pipe.load_lora_weights(folder)`` (and ``synthetic.lora_path=folder``) loads it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weldray.config import WeldrayConfig
from weldray.config.synthetic import SyntheticConfig
from weldray.synthetic.diffusion import (
    LORA_WEIGHT_NAME,
    check_weights,
    class_prompt,
    load_pretrained,
    resolve_source,
    torch_device_dtype,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from PIL.Image import Image

logger = logging.getLogger(__name__)

#: Images per optimiser step.
BATCH_SIZE = 4
#: LoRA targets: the UNet's attention projections (the diffusers SDXL LoRA scripts' choice).
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
#: Fixed draws of the before/after evaluation loss: up to this many images, each at these points of the schedule.
EVAL_IMAGES = 16
EVAL_TIMESTEP_FRACTIONS = (0.1, 0.35, 0.6, 0.85)
TRAIN_LOG_NAME = "train_log.json"


def _square_crop(image: Image, size: int) -> tuple[Image, tuple[int, int], tuple[int, int]]:
    """Resize the short side to ``size`` and centre-crop: (crop, original (h, w), crop top-left (y, x))."""
    import PIL.Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    top, left = (rh - size) // 2, (rw - size) // 2
    resized = image.resize((rw, rh), PIL.Image.Resampling.BICUBIC)
    return resized.crop((left, top, left + size, top + size)), (h, w), (top, left)


class LoraTrainer:
    """The frozen pipeline parts, the LoRA-adapted UNet and the pre-encoded training set.

    ``lora_alpha`` equals the rank (scale 1): the diffusers LoRA format stores no alpha and ``load_lora_weights``
    assumes alpha = rank, so a saved LoRA loads back exactly as trained.
    """

    def __init__(self, cfg: SyntheticConfig, images: list[Image], labels: list[str], device: str = "auto") -> None:
        import torch
        from diffusers import DDPMScheduler, StableDiffusionXLPipeline
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        if not images:
            raise ValueError("LoRA training needs at least one image")
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        check_weights(cfg, generation=False)
        self.cfg = cfg
        self.labels = list(labels)
        self.device, self.dtype = torch_device_dtype(device)
        sdxl = resolve_source(cfg, "sdxl_model")
        pipe = load_pretrained(sdxl, StableDiffusionXLPipeline.from_pretrained, dtype=self.dtype)
        pipe.to(self.device)
        # SDXL's VAE overflows in fp16 (its config asks for fp32: force_upcast); it only encodes, once.
        pipe.vae.to(torch.float32)
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.unet):
            module.requires_grad_(False)
        self.unet = pipe.unet
        with torch.random.fork_rng(devices=[]):  # the adapter's initial weights follow the seed, not the caller's RNG
            torch.manual_seed(cfg.seed)
            self.unet.add_adapter(
                LoraConfig(
                    r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights=True, target_modules=TARGET_MODULES
                )
            )
        cast_training_params(self.unet, dtype=torch.float32)  # trainable LoRA weights in fp32 under fp16 autocast
        if self.device.type == "cuda":
            self.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            self._encode(pipe, images)

    def _encode(self, pipe: Any, images: list[Image]) -> None:
        """VAE latents of the square crops, the text embeddings of each caption, the SDXL time ids."""
        import torch

        latents, time_ids = [], []
        for image in images:
            crop, original, top_left = _square_crop(image, self.cfg.image_size)
            pixels = pipe.image_processor.preprocess(crop).to(self.device, torch.float32)
            latents.append(pipe.vae.encode(pixels).latent_dist.sample(self.generator) * pipe.vae.config.scaling_factor)
            time_ids.append(list(original) + list(top_left) + [self.cfg.image_size, self.cfg.image_size])
        self.latents = torch.cat(latents)
        self.time_ids = torch.tensor(time_ids, device=self.device, dtype=self.dtype)
        embeds, pooled = {}, {}
        for label in sorted(set(self.labels)):
            prompt_embeds, _, pooled_embeds, _ = pipe.encode_prompt(
                class_prompt(label), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            embeds[label], pooled[label] = prompt_embeds, pooled_embeds
        self.prompt_embeds = torch.cat([embeds[label] for label in self.labels])
        self.pooled_embeds = torch.cat([pooled[label] for label in self.labels])

    def predict(
        self, idx: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's prediction for the rows ``idx`` noised with ``noise`` at ``timesteps``, and its target
        (the noise, or the velocity for v-prediction models)."""
        import torch

        latents = self.latents[idx]
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.device.type == "cuda"):
            pred = self.unet(
                noisy.to(self.dtype),
                timesteps,
                encoder_hidden_states=self.prompt_embeds[idx],
                added_cond_kwargs={"text_embeds": self.pooled_embeds[idx], "time_ids": self.time_ids[idx]},
            ).sample
        return pred.float(), target.float()

    def loss(self, idx: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.nn.functional.mse_loss(*self.predict(idx, noise, timesteps))

    def draw(self, idx: torch.Tensor, timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise (and, unless given, uniform timesteps) for the rows ``idx``, from the seeded CPU generator."""
        import torch

        noise = torch.randn(self.latents[idx].shape, generator=self.generator).to(self.device)
        if timesteps is None:
            n = self.noise_scheduler.config.num_train_timesteps
            timesteps = torch.randint(0, n, (len(idx),), generator=self.generator)
        return noise, timesteps.to(self.device)

    def eval_draws(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Fixed evaluation batches: images spread over the set (sources come sorted by class) at fixed points of
        the schedule, with fixed noise."""
        import torch

        n_train, n = self.noise_scheduler.config.num_train_timesteps, len(self.labels)
        rows = torch.linspace(0, n - 1, min(EVAL_IMAGES, n)).round().long().unique()
        draws = []
        for fraction in EVAL_TIMESTEP_FRACTIONS:
            for idx in rows.split(BATCH_SIZE):
                noise, t = self.draw(idx, torch.full((len(idx),), int(fraction * n_train), dtype=torch.long))
                draws.append((idx, noise, t))
        return draws

    def eval_loss(self, draws: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
        """Mean loss over fixed draws: the same number before and after training measures what was learnt."""
        import torch

        with torch.no_grad():
            return float(sum(self.loss(*d).item() * len(d[0]) for d in draws) / sum(len(d[0]) for d in draws))

    def fit(self) -> list[float]:
        """``synthetic.lora_steps`` AdamW steps on shuffled batches; the loss of every step."""
        import torch

        params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lora_lr, weight_decay=1e-2)
        # fp16 autocast on CUDA: scale the loss so small LoRA gradients do not underflow (a no-op on CPU).
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.device.type == "cuda")
        steps, n = self.cfg.lora_steps, len(self.labels)
        log_every = max(1, steps // 20)
        losses: list[float] = []
        order = torch.empty(0, dtype=torch.long)
        self.unet.train()
        for step in range(1, steps + 1):
            if len(order) < min(BATCH_SIZE, n):  # epochs of shuffled rows
                order = torch.cat([order, torch.randperm(n, generator=self.generator)])
            idx, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
            loss = self.loss(idx, *self.draw(idx))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"LoRA training diverged at step {step} (loss {loss.item()}); lower synthetic.lora_lr"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            if step % log_every == 0 or step == steps:
                recent = losses[-log_every:]
                logger.info("LoRA step %d/%d: loss %.4f", step, steps, sum(recent) / len(recent))
        self.unet.eval()
        return losses

    def save(self, out_dir: Path) -> Path:
        """The LoRA in diffusers format: ``out_dir/pytorch_lora_weights.safetensors``."""
        from diffusers import StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        out_dir.mkdir(parents=True, exist_ok=True)
        StableDiffusionXLPipeline.save_lora_weights(
            save_directory=out_dir,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet)),
            weight_name=LORA_WEIGHT_NAME,
            safe_serialization=True,
        )
        return out_dir / LORA_WEIGHT_NAME


def train_lora(
    images: list[Image],
    labels: list[str],
    cfg: SyntheticConfig,
    out_dir: str | Path,
    device: str = "auto",
    source_ids: list[str] | None = None,
) -> Path:
    """Fine-tune a LoRA on ``images`` (captioned by class), save it in diffusers format under ``out_dir``.

    Writes ``out_dir/pytorch_lora_weights.safetensors`` and ``out_dir/train_log.json`` (per-step losses, the loss
    on fixed evaluation draws before and after training, and ``source_ids``: the ids of the photos, so lineage
    checks can refuse a LoRA that saw a held-out photo) and returns ``out_dir`` (a ``synthetic.lora_path``).
    """
    if source_ids is not None and len(source_ids) != len(images):
        raise ValueError(f"images and source_ids differ in length: {len(images)} vs {len(source_ids)}")
    out_dir = Path(out_dir)
    trainer = LoraTrainer(cfg, images, labels, device)
    eval_draws = trainer.eval_draws()
    loss_before = trainer.eval_loss(eval_draws)
    logger.info(
        "LoRA rank %d on %d images %s, %d steps, lr %g, on %s; eval loss %.4f",
        cfg.lora_rank, len(images), dict(Counter(labels)), cfg.lora_steps, cfg.lora_lr, trainer.device, loss_before,
    )
    losses = trainer.fit()
    loss_after = trainer.eval_loss(eval_draws)
    logger.info("LoRA eval loss %.4f -> %.4f", loss_before, loss_after)
    weights = trainer.save(out_dir)
    log = {
        "sdxl_model": cfg.sdxl_model,
        "base_model": cfg.base_model,
        "rank": cfg.lora_rank,
        "lr": cfg.lora_lr,
        "steps": cfg.lora_steps,
        "batch_size": BATCH_SIZE,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "images_per_label": dict(Counter(labels)),
        "captions": {label: class_prompt(label) for label in sorted(set(labels))},
        "eval_loss_before": loss_before,
        "eval_loss_after": loss_after,
        "losses": losses,
        "source_ids": sorted(source_ids) if source_ids is not None else None,
    }
    (out_dir / TRAIN_LOG_NAME).write_text(json.dumps(log, indent=1))
    logger.info("LoRA written to %s", weights)
    return out_dir


def lora_source_ids(lora_path: str | Path) -> list[str] | None:
    """The ids of the real photos a LoRA (folder or weights file) was trained on, from the ``train_log.json``
    :func:`train_lora` wrote beside it; None when it recorded none (a LoRA from elsewhere)."""
    path = Path(lora_path).expanduser()
    log_path = (path if path.is_dir() else path.parent) / TRAIN_LOG_NAME
    if not log_path.is_file():
        return None
    return json.loads(log_path.read_text()).get("source_ids")


def train_lora_on_dataset(input_uri: str, out_dir: str | Path, cfg: WeldrayConfig, device: str = "auto") -> Path:
    """``weldray train-lora``: a LoRA on the train rows of this config (``training.cv_fold`` / ``holdout``, the
    rows ``weldray generate`` may use as sources)."""
    from weldray.synthetic.job import source_rows

    check_weights(cfg.synthetic, generation=False)  # before reading any photo
    rows, description, _ = source_rows(input_uri, cfg)
    logger.info("LoRA on the train rows of %s", description)
    return train_lora_on_rows(rows, out_dir, cfg, device)


def train_lora_on_rows(rows: pd.DataFrame, out_dir: str | Path, cfg: WeldrayConfig, device: str = "auto") -> Path:
    """A LoRA on the photos of manifest ``rows``, each photo's relpath recorded as its source id.

    Photos are shrunk to a short side of ``synthetic.image_size`` as they are read (hundreds of full-size photos
    need not sit in memory); photos broken since ingest are logged and skipped.
    """
    import PIL.Image

    from weldray.preprocessing import load_image

    size = cfg.synthetic.image_size
    images, labels, ids = [], [], []
    for row in rows.itertuples():
        try:
            image = load_image(row.path)
        except (OSError, ValueError) as exc:
            logger.warning("LoRA: skipping %s (%s)", row.relpath, exc)
            continue
        scale = size / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.Resampling.BOX)
        images.append(image)
        labels.append(row.label)
        ids.append(row.relpath)
    logger.info("LoRA on %d of %d photos", len(images), len(rows))
    return train_lora(images, labels, cfg.synthetic, out_dir, device, source_ids=ids)


def lora_matches(lora_dir: str | Path, cfg: SyntheticConfig, source_ids: list[str]) -> bool:
    """Whether ``lora_dir`` holds a LoRA :func:`train_lora` made with these settings from exactly these photos
    (a resumed generate job keeps it instead of training again)."""
    path = Path(lora_dir)
    if not (path / LORA_WEIGHT_NAME).is_file() or not (path / TRAIN_LOG_NAME).is_file():
        return False
    log = json.loads((path / TRAIN_LOG_NAME).read_text())
    wanted = {"sdxl_model": cfg.sdxl_model, "base_model": cfg.base_model, "rank": cfg.lora_rank, "lr": cfg.lora_lr,
              "steps": cfg.lora_steps, "image_size": cfg.image_size, "seed": cfg.seed,
              "source_ids": sorted(source_ids)}
    return all(log.get(k) == v for k, v in wanted.items())
