"""A tiny random SDXL-Turbo pipeline and ControlNet, built in code and saved with ``save_pretrained``.

The tests then load them through the product's own local-folder code path (nothing is downloaded). The
architecture is SDXL's (two CLIP text encoders, ``text_time`` added conditioning, a ControlNet made from the
UNet), only narrow: generation at 64 px takes well under a second on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from weldray.config.synthetic import SyntheticConfig

if TYPE_CHECKING:
    from PIL.Image import Image

#: Latent downscale of the tiny VAE (2 blocks): ControlNet's conditioning embedding must downscale as much.
_VAE_BLOCKS = (32, 64)


@dataclass(frozen=True)
class TinySdxl:
    """Folders in ``save_pretrained`` layout: the SDXL pipeline (no ControlNet) and the ControlNet."""

    sdxl_dir: Path
    controlnet_dir: Path


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol also as a word end (``</w>``), plus the special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    return vocab


def build_tiny_sdxl(root: Path, seed: int = 0) -> TinySdxl:
    """Build random tiny models (deterministic by ``seed``) and save them under ``root``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = _byte_level_vocab()
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(vocab),
        projection_dim=32,
        hidden_act="gelu",
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        # SDXL's added conditioning: 6 time ids x 8 + the pooled projection of text encoder 2 (32).
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=64,  # hidden states of both text encoders, concatenated
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=list(_VAE_BLOCKS),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(_VAE_BLOCKS),
        up_block_types=["UpDecoderBlock2D"] * len(_VAE_BLOCKS),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    # SDXL-Turbo's scheduler: ancestral Euler with trailing timesteps (1-4 step sampling).
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing"
    )
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    # Random zero-initialised ControlNet outputs would make the control image a no-op: use random ones.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.02)

    out = TinySdxl(sdxl_dir=root / "sdxl", controlnet_dir=root / "controlnet")
    pipe.save_pretrained(out.sdxl_dir)
    controlnet.save_pretrained(out.controlnet_dir)
    return out


@pytest.fixture(scope="module", autouse=True)
def offline_one_thread() -> Iterator[None]:
    """Nothing may download; one torch thread: these tiny kernels are faster on one, and OpenMP's two threads
    on a busy shared machine are 10-60x slower. Autouse in every module that imports it."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinySdxl:
    """Built once per test session, even when several modules import this fixture."""
    pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'weldray[synth]')")
    root = tmp_path_factory.getbasetemp() / "tiny_sdxl"
    models = TinySdxl(sdxl_dir=root / "sdxl", controlnet_dir=root / "controlnet")
    if not (models.controlnet_dir / "config.json").is_file():
        models = build_tiny_sdxl(root)
    return models


def tiny_config(models: TinySdxl, **overrides: Any) -> SyntheticConfig:
    """``synthetic.*`` for the tiny models: 64 px, 2 steps at strength 0.5 (one denoising step)."""
    settings: dict[str, Any] = {
        "generator": "sdxl_turbo",
        "sdxl_model": str(models.sdxl_dir),
        "controlnet_model": str(models.controlnet_dir),
        "image_size": 64,
        "num_inference_steps": 2,
        "strength": 0.5,
    }
    return SyntheticConfig(**{**settings, **overrides})


def weld_photo(seed: int, size: tuple[int, int] = (64, 64)) -> Image:
    """A bright bead across a dark plate with noise: structure for img2img and the tile control to keep."""
    import PIL.Image

    w, h = size
    rng = np.random.default_rng(seed)
    y = np.arange(h)[:, None]
    bead = np.exp(-(((y - h / 2) / (h / 8)) ** 2)) * np.ones((1, w))
    gray = 40 + 170 * bead + rng.normal(0, 12, (h, w))
    rgb = np.stack([gray, gray * 0.9, gray * 0.8], axis=-1)
    return PIL.Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
