"""A small text-segmentation network: a second, recognition-free view for faint text OCR misses.

PP-OCR's detector binarises its own probability map and the recogniser then has to read the crop; a faint
watermark (a few grey levels over a textured plate) fails one or the other. :class:`TextSegNet` predicts,
for every 4x4 cell, whether it holds glyph pixels. It is trained by ``weldray train-segmenter`` on
procedural welds whose exact glyph masks the generator knows (seeds disjoint from every evaluation seed),
optionally with procedural text composited onto text-free real photos so real plates and beads are seen
as background. Its regions join the OCR boxes in :class:`weldray.text_removal.TextCleaner`; each one is
recorded as a :class:`~weldray.text_removal.detectors.Detection` with ``source="textseg"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weldray.config import TextRemovalConfig
from weldray.text_removal.detectors import SEGMENTED, Detection, MissingWeightsError, resolve_device

#: Output stride of the network: one logit per 4x4 input cell (the mask is dilated by ~25 px anyway).
STRIDE = 4
#: The network runs on the image resized so its shorter side is this (the detector's reference scale).
INPUT_SIDE = 640
#: The weights shipped in the package (trained by ``weldray train-segmenter``, see docs/text_removal.md).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "textseg.pt"

_MEAN = np.float32([0.485, 0.456, 0.406]) * 255
_STD = np.float32([0.229, 0.224, 0.225]) * 255


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1):  # -> torch.nn.Sequential
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def build_textseg(width: int = 16):  # -> torch.nn.Module
    """A U-Net-shaped FCN: encoder to stride 16 (dilated convs for a ~200 px receptive field, a word's
    width), decoder back to stride 4, one logit per cell."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    w = width

    class TextSegNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s2 = nn.Sequential(_block(3, w, 2), _block(w, w))
            self.s4 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))
            self.s8 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w))
            self.s16 = nn.Sequential(
                _block(4 * w, 6 * w, 2), _block(6 * w, 6 * w, dilation=2), _block(6 * w, 6 * w, dilation=4)
            )
            self.up8 = _block(10 * w, 4 * w)
            self.up4 = _block(6 * w, 2 * w)
            self.head = nn.Conv2d(2 * w, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f4 = self.s4(self.s2(x))
            f8 = self.s8(f4)
            f16 = self.s16(f8)
            y = self.up8(torch.cat([F.interpolate(f16, size=f8.shape[-2:], mode="nearest"), f8], 1))
            y = self.up4(torch.cat([F.interpolate(y, size=f4.shape[-2:], mode="nearest"), f4], 1))
            return self.head(y)

    return TextSegNet()


def to_tensor(images: np.ndarray):  # -> torch.Tensor
    """uint8 NxHxWx3 RGB -> normalised float NCHW (ImageNet statistics)."""
    import torch

    x = (images.astype(np.float32) - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def load_textseg(path: str | Path | None, device: str = "cpu"):  # -> (torch.nn.Module, dict)
    """The network and its training metadata from a file written by ``weldray train-segmenter``."""
    import torch

    file = Path(path).expanduser() if path else SHIPPED_WEIGHTS
    if not file.is_file():
        raise MissingWeightsError(
            f"text segmenter weights {file.name} not found at {file}: train them with "
            "`weldray train-segmenter OUT.pt` (procedural welds only, no download) and set "
            "text_removal.segmenter_model_path=OUT.pt, or set text_removal.segmenter=none"
        )
    blob = torch.load(file, map_location="cpu", weights_only=True)
    net = build_textseg(int(blob["meta"]["width"]))
    net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return net.eval().to(device), dict(blob["meta"])


def glyph_probability(net, image: np.ndarray, device: str = "cpu") -> np.ndarray:  # noqa: ANN001
    """Per-pixel probability (float32, HxW) that a pixel is in a 4x4 cell holding glyph pixels."""
    import cv2
    import torch

    h, w = image.shape[:2]
    scale = INPUT_SIDE / min(h, w)
    sh, sw = (max(STRIDE, round(h * scale / STRIDE) * STRIDE), max(STRIDE, round(w * scale / STRIDE) * STRIDE))
    x = image if (sh, sw) == (h, w) else cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        logits = net(to_tensor(x[None]).to(device))[0, 0].float().cpu().numpy()
    prob = 1.0 / (1.0 + np.exp(-logits))
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class TextSegmenter:
    """Regions of the glyph-probability map above ``segmenter_threshold`` as recognition-free detections."""

    cfg: TextRemovalConfig
    name: str = SEGMENTED

    def __post_init__(self) -> None:
        self.device = resolve_device(self.cfg.device)
        self.net, self.meta = load_textseg(self.cfg.segmenter_model_path, self.device)

    def probability(self, image: np.ndarray) -> np.ndarray:
        """:func:`glyph_probability` on ``num_threads`` intra-op threads (restored after: torch's setting is
        process-wide, and a training in the same process must keep its own)."""
        import torch

        before = torch.get_num_threads()
        if self.cfg.num_threads > 0 and self.device == "cpu":
            torch.set_num_threads(self.cfg.num_threads)
        try:
            return glyph_probability(self.net, image, self.device)
        finally:
            torch.set_num_threads(before)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """One detection per connected region; ``det_score`` is the region's peak probability.

        A region is kept when its peak reaches ``segmenter_threshold`` and its area is at least
        ``segmenter_min_area`` of the image (a speck is a spatter bead, not a word); its polygon is the
        region's outline at the binarised map, so a diagonal tiled watermark is masked letter row by row.
        """
        return self.regions(self.probability(image))

    def regions(self, prob: np.ndarray) -> list[Detection]:
        """:meth:`detect` on a probability map already computed."""
        import cv2

        binary = (prob >= self.cfg.segmenter_threshold * 0.5).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        dets = []
        min_area = self.cfg.segmenter_min_area * prob.shape[0] * prob.shape[1]
        for i in range(1, n):
            region = labels == i
            peak = float(prob[region].max())
            if peak < self.cfg.segmenter_threshold:
                continue
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            contour = max(contours, key=cv2.contourArea)
            poly = cv2.approxPolyDP(contour, 1.5, True).reshape(-1, 2).astype(np.float32)
            if len(poly) < 3:
                continue
            d = Detection(box=poly, det_score=peak, source=self.name)
            if stats[i, cv2.CC_STAT_AREA] < min_area:
                d.kept, d.reason = False, f"segmented area {stats[i, cv2.CC_STAT_AREA]}px < {min_area:.0f}px"
            dets.append(d)
        return dets
