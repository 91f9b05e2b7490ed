"""Heatmaps from the model's class activation maps (:mod:`weldray.models.cam`) and their overlays.

A heatmap shows where the evidence *for the predicted class against the others* lies: the predicted
class's map minus the mean of the other classes' maps, whose spatial mean is the logit margin behind
the decision. Only its positive part is drawn, scaled to [0, 1] and resized to the photo.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def evidence_map(maps: np.ndarray, class_index: int) -> np.ndarray:
    """``maps [C, h, w]`` -> the positive evidence for ``class_index`` against the rest, in [0, 1]."""
    others = np.delete(maps, class_index, axis=0).mean(0)
    margin = np.clip(maps[class_index] - others, 0, None)
    peak = float(margin.max())
    return (margin / peak if peak > 0 else margin).astype(np.float32)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``heat [h, w]`` -> ``[H, W]`` for ``size = (W, H)``, bilinear (cell centres aligned, as OpenCV does)."""
    import cv2

    return cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)


def peak_xy(heat: np.ndarray) -> tuple[int, int]:
    """Pixel (x, y) of the heatmap's maximum."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The photo with the heatmap (``[H, W]`` at the photo's size) blended in as a jet colour map."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    colours = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    weight = alpha * np.clip(heat, 0, 1)[..., None] ** 0.5  # cold regions stay close to the photo
    return Image.fromarray(np.uint8(rgb * (1 - weight) + colours * weight))


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
