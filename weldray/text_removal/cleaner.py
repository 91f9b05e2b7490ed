"""Detect -> filter -> mask -> inpaint -> (audit) for one image; shared by the Ray actor and the plain loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from weldray.config import TextRemovalConfig
from weldray.text_removal.detectors import Detection, TextDetector, create_detector, filter_detections
from weldray.text_removal.inpainters import Inpainter, create_inpainter


#: ``dilation_px`` is given for a 640 px image (the seed's 20-30 px); it scales with the short side so that
#: a 160 px thumbnail is not wiped by a 25 px halo.
REFERENCE_SIDE = 640


def scaled_dilation(dilation_px: int, shape: tuple[int, ...]) -> int:
    if dilation_px <= 0:
        return 0
    return max(1, round(dilation_px * min(shape[:2]) / REFERENCE_SIDE))


def text_mask(detections: list[Detection], shape: tuple[int, ...], dilation_px: int) -> np.ndarray:
    """uint8 0/255 mask of the kept boxes, dilated by ``dilation_px`` (elliptic) to cover halos."""
    import cv2

    mask = np.zeros(shape[:2], np.uint8)
    polys = [np.round(np.asarray(d.box)).astype(np.int32).reshape(-1, 1, 2) for d in detections if d.kept]
    if not polys:
        return mask
    cv2.fillPoly(mask, polys, 255)
    if dilation_px > 0:
        k = 2 * dilation_px + 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return mask


@dataclass
class CleanResult:
    image: np.ndarray
    mask: np.ndarray
    detections: list[Detection]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> list[Detection]:
        return [d for d in self.detections if d.kept]

    @property
    def mask_fraction(self) -> float:
        return float((self.mask > 0).mean())


class TextCleaner:
    """One detector + one inpainter, loaded once and reused (one per Ray actor)."""

    def __init__(
        self, cfg: TextRemovalConfig, detector: TextDetector | None = None, inpainter: Inpainter | None = None
    ) -> None:
        self.cfg = cfg
        self.detector = detector or create_detector(cfg)
        self.inpainter = inpainter or create_inpainter(cfg)

    def find_text(self, image: np.ndarray) -> list[Detection]:
        """All candidates, each marked kept or rejected by the configured filters."""
        return filter_detections(self.detector.detect(image), image.shape, self.cfg)

    def clean(self, image: np.ndarray) -> CleanResult:
        """Detect and inpaint, repeated up to ``passes`` times: text hidden behind larger text
        (stamps under captions, faint watermarks) often shows only once the first layer is gone."""
        t0 = time.perf_counter()
        detect_s = 0.0
        out, mask, dets = image, np.zeros(image.shape[:2], np.uint8), []
        for p in range(self.cfg.passes):
            t = time.perf_counter()
            found = self.find_text(out)
            detect_s += time.perf_counter() - t
            for d in found:
                d.pass_index = p
            dets += found
            new = text_mask(found, image.shape, scaled_dilation(self.cfg.dilation_px, image.shape))
            if not new.any():
                break
            out = self.inpainter.inpaint(out, new)
            mask = np.maximum(mask, new)
        total_ms = (time.perf_counter() - t0) * 1e3
        return CleanResult(
            out, mask, dets, timings_ms={"detect": detect_s * 1e3, "inpaint": total_ms - detect_s * 1e3}
        )

    def residual(self, cleaned: np.ndarray) -> list[Detection]:
        """The audit: text the same detector and filters still find on a cleaned image."""
        return [d for d in self.find_text(cleaned) if d.kept]
