"""Detect -> filter -> mask -> inpaint -> (audit) for one image; shared by the Ray actor and the loop."""

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


def _line_geometry(box: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(centre, unit direction along the line, length, thickness) of a quadrilateral box."""
    import cv2

    (cx, cy), (a, b), angle = cv2.minAreaRect(box.reshape(-1, 2).astype(np.float32))
    rad = np.deg2rad(angle if a >= b else angle + 90.0)
    return np.array([cx, cy]), np.array([np.cos(rad), np.sin(rad)]), max(a, b), min(a, b)


def bridge_lines(detections: list[Detection], max_gap: float) -> list[np.ndarray]:
    """Convex hulls joining kept boxes that continue one text line across a gap.

    A watermark crossing the bright bead (or a word split by a marker stroke) comes back as two boxes
    with the letters in between unfound. Two boxes are joined when the more elongated one is a line
    (length >= 1.5 x thickness), the other lies on it (centre within half a line height of its axis,
    directions within 15 degrees unless the other box is a single, squarish character), their heights
    agree within 1.8x and the gap between their ends is at most ``max_gap`` line heights.
    """
    boxes = [np.asarray(d.box, np.float32).reshape(-1, 2) for d in detections if d.kept]
    geo = [_line_geometry(b) for b in boxes]
    hulls = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (ci, ui, li, ti), (cj, uj, lj, tj) = geo[i], geo[j]
            if li / max(ti, 1.0) < lj / max(tj, 1.0):  # reference: the more elongated box
                (ci, ui, li, ti), (cj, uj, lj, tj) = (cj, uj, lj, tj), (ci, ui, li, ti)
            if li < 1.5 * ti or max(ti, tj) > 1.8 * max(min(ti, tj), 1.0):
                continue
            if lj >= 1.5 * tj and abs(float(ui @ uj)) < np.cos(np.deg2rad(15)):
                continue
            d = cj - ci
            height = (ti + tj) / 2
            if abs(d[0] * ui[1] - d[1] * ui[0]) > 0.5 * height:
                continue
            far_side = lj if lj >= 1.5 * tj else max(lj, tj)
            if abs(float(d @ ui)) - (li + far_side) / 2 > max_gap * height:
                continue
            hulls.append(np.concatenate([boxes[i], boxes[j]]))
    import cv2

    return [cv2.convexHull(h.astype(np.float32)) for h in hulls]


def text_mask(
    detections: list[Detection], shape: tuple[int, ...], dilation_px: int, bridge_gap: float = 0.0
) -> np.ndarray:
    """uint8 0/255 mask of the kept boxes (plus bridges along split lines, see :func:`bridge_lines`),
    dilated by ``dilation_px`` (elliptic) to cover halos."""
    import cv2

    mask = np.zeros(shape[:2], np.uint8)
    polys = [np.round(np.asarray(d.box)).astype(np.int32).reshape(-1, 1, 2) for d in detections if d.kept]
    if bridge_gap > 0:
        bridges = bridge_lines(detections, bridge_gap)
        polys += [np.round(h).astype(np.int32).reshape(-1, 1, 2) for h in bridges]
    if not polys:
        return mask
    for poly in polys:  # one call per polygon: fillPoly on a list leaves overlaps of two boxes unfilled
        cv2.fillPoly(mask, [poly], 255)
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
            new = text_mask(
                found, image.shape, scaled_dilation(self.cfg.dilation_px, image.shape), self.cfg.bridge_gap
            )
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
