"""Inpainters behind one small registry (``text_removal.inpainter``).

Contract: ``inpaint(image uint8 HxWx3 RGB, mask uint8 HxW, nonzero = fill) -> uint8 HxWx3``;
pixels outside the mask come back unchanged, so the bead is only touched where text was found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from weldray.config import TextRemovalConfig
from weldray.text_removal.detectors import MissingWeightsError, resolve_device


class Inpainter(Protocol):
    name: str

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


_REGISTRY: dict[str, Callable[[TextRemovalConfig], Inpainter]] = {}


def register_inpainter(name: str) -> Callable[[Callable[[TextRemovalConfig], Inpainter]], Callable]:
    def deco(factory: Callable[[TextRemovalConfig], Inpainter]) -> Callable:
        _REGISTRY[name] = factory
        return factory

    return deco


def list_inpainters() -> list[str]:
    return sorted(_REGISTRY)


def create_inpainter(cfg: TextRemovalConfig) -> Inpainter:
    try:
        factory = _REGISTRY[cfg.inpainter]
    except KeyError:
        raise ValueError(f"unknown inpainter {cfg.inpainter!r}; available: {list_inpainters()}") from None
    return factory(cfg)


@dataclass
class OpenCVInpainter:
    """Telea (fast marching) or Navier-Stokes inpainting: fast, smooth, untextured fills."""

    method: str = "telea"
    radius: int = 5
    name: str = "opencv"

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        if not mask.any():
            return image.copy()
        flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
        return cv2.inpaint(np.ascontiguousarray(image), (mask > 0).astype(np.uint8) * 255, self.radius, flag)


@register_inpainter("opencv")
def _opencv(cfg: TextRemovalConfig) -> Inpainter:
    return OpenCVInpainter(method=cfg.opencv_method, radius=cfg.inpaint_radius)


class LamaInpainter:
    """Big-LaMa from a local TorchScript file (``big-lama.pt``), CPU or CUDA.

    The file's call signature is ``model(image[B,3,H,W] in 0..1, mask[B,1,H,W] in {0,1}) ->
    [B,3,H,W] in 0..1`` with H, W multiples of 8; inputs are padded (symmetric) and the output
    cropped back, then blended so that unmasked pixels stay byte-identical.
    """

    name = "lama"
    MODULO = 8

    def __init__(self, model_path: str | Path | None, device: str = "auto", num_threads: int = 0) -> None:
        import torch

        path = check_lama_file(model_path)
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.device = torch.device(resolve_device(device))
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.path = path

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        if not mask.any():
            return image.copy()
        h, w = mask.shape[:2]
        binary = mask > 0
        img = _pad_to_modulo(image.astype(np.float32) / 255.0, self.MODULO)
        msk = _pad_to_modulo(binary.astype(np.float32)[..., None], self.MODULO)
        img_t = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        msk_t = torch.from_numpy(msk.transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            out = self.model(img_t, msk_t)
        out_np = out[0].permute(1, 2, 0).float().cpu().numpy()[:h, :w]
        filled = np.clip(out_np * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.where(binary[..., None], filled, image)


def check_lama_file(model_path: str | Path | None) -> Path:
    """The Big-LaMa file, or an error naming it and how to provide it (never downloaded at run time)."""
    url = "https://github.com/enesmsahin/simple-lama-inpainting/releases/download/v0.1.0/big-lama.pt"
    if not model_path:
        raise MissingWeightsError(
            "the lama inpainter needs the Big-LaMa TorchScript file big-lama.pt: download it once on a machine "
            f"with network access ({url}) and set text_removal.lama_model_path=/path/to/big-lama.pt; "
            "weldray never downloads at run time"
        )
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"Big-LaMa TorchScript file big-lama.pt not found at {path}: download it on a machine with network "
            f"access ({url}), copy it there, or point text_removal.lama_model_path at it"
        )
    return path


def _pad_to_modulo(arr: np.ndarray, mod: int) -> np.ndarray:
    h, w = arr.shape[:2]
    ph, pw = (-h) % mod, (-w) % mod
    if not ph and not pw:
        return arr
    return np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


@register_inpainter("lama")
def _lama(cfg: TextRemovalConfig) -> Inpainter:
    return LamaInpainter(cfg.lama_model_path, device=cfg.device, num_threads=cfg.num_threads)
