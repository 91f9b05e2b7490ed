"""Detect -> filter -> mask -> inpaint -> (audit) for one image; shared by the Ray actor and the loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from weldray.config import TextRemovalConfig
from weldray.text_removal.detectors import (
    SEGMENTED,
    Detection,
    TextDetector,
    create_detector,
    filter_detections,
    new_boxes,
)
from weldray.text_removal.inpainters import Inpainter, create_inpainter
from weldray.text_removal.segmenter import TextSegmenter

#: ``dilation_px`` is given for a 640 px image (the seed's 20-30 px); it scales with the short side so that
#: a 160 px thumbnail is not wiped by a 25 px halo.
REFERENCE_SIDE = 640
#: A box counts as a text line (a direction to bridge along) when its length is at least this many times its
#: height. 1.3 lets a two-letter piece ("FT" of a watermark "DRAFT" crossing the bead) lead a bridge.
LINE_ELONGATION = 1.3
#: Reason given to a candidate of a later pass outside the inpainted area (see ``_keep_first_judgement``).
ALREADY_JUDGED = "judged on the original image"
#: Reason of a short read kept because it continues a kept text line (see ``_admit_line_continuations``).
CONTINUES_LINE = "short text continuing a kept text line"


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
    (length >= ``LINE_ELONGATION`` x thickness), the other lies on it (centre within half a line height of its axis,
    directions within 15 degrees unless the other box is a single, squarish character), their heights
    agree within 1.8x and the gap between their ends is at most ``max_gap`` line heights. Segmented regions
    (``SEGMENTED``) are outlines of letters, not line boxes, and are not bridged.
    """
    boxes = [np.asarray(d.box, np.float32).reshape(-1, 2) for d in detections if d.kept and d.source != SEGMENTED]
    geo = [_line_geometry(b) for b in boxes]
    hulls = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (ci, ui, li, ti), (cj, uj, lj, tj) = geo[i], geo[j]
            if li / max(ti, 1.0) < lj / max(tj, 1.0):  # reference: the more elongated box
                (ci, ui, li, ti), (cj, uj, lj, tj) = (cj, uj, lj, tj), (ci, ui, li, ti)
            if li < LINE_ELONGATION * ti or max(ti, tj) > 1.8 * max(min(ti, tj), 1.0):
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


class Codec(Protocol):
    """How a cleaned image is stored: later passes and the audit search what a reader will decode."""

    def encode(self, image: np.ndarray) -> bytes: ...

    def decode(self, data: bytes) -> np.ndarray: ...


@dataclass
class CleanResult:
    image: np.ndarray
    mask: np.ndarray
    #: Every candidate of every pass (``pass_index``), kept or rejected with a reason.
    detections: list[Detection]
    #: Text the detector still finds on the final image (as decoded from ``encoded`` with a codec);
    #: None when the final search was switched off (``audit: false``).
    residual: list[Detection] | None = None
    #: The stored file of the cleaned image (None without a codec, or when nothing was inpainted:
    #: then the input itself is the output).
    encoded: bytes | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> list[Detection]:
        """The text boxes that were inpainted (the final search's finds are ``residual``, not inpainted)."""
        left = [id(d) for d in self.residual or []]
        return [d for d in self.detections if d.kept and id(d) not in left]

    @property
    def mask_fraction(self) -> float:
        return float((self.mask > 0).mean())


def _box_map(detections: list[Detection], shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    out = np.zeros(shape[:2], np.uint8)
    for d in detections:
        cv2.fillPoly(out, [np.round(np.asarray(d.box)).astype(np.int32).reshape(-1, 1, 2)], 1)
    return out


def _continues_a_line(d: Detection, lines: list[Detection], cfg: TextRemovalConfig) -> bool:
    """Whether ``d`` lies on one of ``lines``, within ``bridge_gap`` (at least 1) line heights of its end
    (:func:`bridge_lines`)."""
    probe = replace(d, kept=True)
    return any(bridge_lines([line, probe], max(cfg.bridge_gap, 1.0)) for line in lines)


def _keep_first_judgement(
    found: list[Detection], mask: np.ndarray, rejected0: np.ndarray, removed: list[Detection], cfg: TextRemovalConfig
) -> None:
    """Outside the inpainted area a later pass adds words but does not overturn pass 0.

    There the pixels are the original's up to re-encoding noise, which moves borderline recognition scores
    by 0.1-0.3: a hole read "0" at 0.64 on the original reads 0.75, pliers beside a removed caption read
    "A" at 0.98. So a candidate less than half inside the inpainted area is not inpainted when pass 0
    rejected a candidate covering it, or when it reads as a lone letter or two (``short_text_chars``)
    that does not continue a removed text line (the big "Q" of a logo whose "UANTUM" went on pass 0 does;
    see :func:`bridge_lines`). Words found there are kept (faint text the first search missed), so are
    segmented regions (the lone-letter rule is about reads), and candidates inside the inpainted area are
    judged normally: leftovers of removed text and text revealed under it lie there.
    """
    for d in found:
        if not d.kept:
            continue
        own = _box_map([d], mask.shape).astype(bool)
        area = 0.5 * max(int(own.sum()), 1)
        if (own & (mask > 0)).sum() >= area:
            continue
        if (own & (rejected0 > 0)).sum() >= area:
            d.kept, d.reason = False, f"{ALREADY_JUDGED}: rejected there on pass 0"
        elif (
            d.text_score is not None
            and sum(ch.isalnum() for ch in d.text) <= cfg.short_text_chars
            and not _continues_a_line(d, removed, cfg)
        ):
            d.kept, d.reason = False, f"{ALREADY_JUDGED}: a lone letter outside the inpainted area"


def _admit_line_continuations(
    found: list[Detection], lines: list[Detection], shape: tuple[int, ...], cfg: TextRemovalConfig
) -> None:
    """Keep a short read that failed only ``min_short_text_score`` when it continues a kept text line.

    The short-text rule is there for lone blobs (a hole read "0", pores "8"). A letter or two on the axis of
    a kept line, at its height and near its end (:func:`_continues_a_line`), is the rest of that text: a
    tiled watermark cut by the image border ("E" of "SAMPLE" at 0.84), a letter split off a word. Every other
    filter still applies: the candidate is re-judged with only that threshold lifted.
    """
    relaxed = replace(cfg, min_short_text_score=0.0)
    for d in found:
        if d.kept or d.text_score is None or not filter_detections([replace(d)], shape, relaxed)[0].kept:
            continue
        if _continues_a_line(d, lines, cfg):
            d.kept, d.reason = True, CONTINUES_LINE


def _keep_near_text(
    regions: list[Detection], text: list[Detection], shape: tuple[int, ...], cfg: TextRemovalConfig
) -> None:
    """Reject segmented regions farther than ``segmenter_reach_px`` (scaled) from every OCR-kept box.

    The segmenter learned text from procedural overlays; on real photos without text it still fires on
    specular ripples and pores (docs/text_removal.md, "Text segmenter"), and a 25 px halo there erases a defect.
    Next to text OCR found, a region is most likely more of the same overlay (a faint tile, a letter)."""
    if cfg.segmenter_reach_px is None:
        return
    import cv2

    anchors = [d for d in text if d.source != SEGMENTED]
    reach = scaled_dilation(cfg.segmenter_reach_px, shape)
    near = _box_map(anchors, shape)
    if reach > 0:
        near = cv2.dilate(near, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
    for d in regions:
        if d.kept and not (_box_map([d], shape) & near).any():
            d.kept, d.reason = False, f"segmented region farther than {cfg.segmenter_reach_px}px from OCR-found text"


class TextCleaner:
    """One detector (+ the text segmenter unless ``segmenter: none``) + one inpainter, loaded once and reused
    (one per Ray actor)."""

    def __init__(
        self,
        cfg: TextRemovalConfig,
        detector: TextDetector | None = None,
        inpainter: Inpainter | None = None,
        segmenter: TextSegmenter | None = None,
    ) -> None:
        self.cfg = cfg
        self.detector = detector or create_detector(cfg)
        self.inpainter = inpainter or create_inpainter(cfg)
        self.segmenter = segmenter or (TextSegmenter(cfg) if cfg.segmenter != "none" else None)

    def find_text(self, image: np.ndarray, anchors: Sequence[Detection] = ()) -> list[Detection]:
        """All candidates, each marked kept or rejected: the detector's by the configured filters, then the
        segmenter's regions that the kept boxes do not already cover (>= 70 % of the region), kept only within
        ``segmenter_reach_px`` of a kept box of this search or of ``anchors`` (text kept on earlier passes)."""
        dets = filter_detections(self.detector.detect(image), image.shape, self.cfg)
        for d in dets:
            d.source = d.source or self.detector.name
        if self.segmenter is not None:
            kept = [d for d in dets if d.kept]
            regions = new_boxes(self.segmenter.detect(image), kept, image.shape)
            _keep_near_text(regions, [*kept, *anchors], image.shape, self.cfg)
            dets += regions
        return dets

    def clean(self, image: np.ndarray, codec: Codec | None = None) -> CleanResult:
        """Detect and inpaint until the detector finds no more text, at most ``passes`` inpaint rounds.

        After each round the image goes through ``codec`` (encode as stored, decode) before the next
        search, so each search sees the pixels a reader will get: text revealed under a removed caption and
        leftovers of a letter are judged on the real output. Outside the inpainted area a later search adds
        words but does not overturn pass 0 (see :func:`_keep_first_judgement`; such finds are recorded).
        The search that finds nothing (or the one after the last round) is the audit (``residual``); with
        ``cfg.audit`` off the search after the last round is skipped. Pass 0 runs on the original; an image
        without text there is not re-encoded at all (``encoded`` None: store the input as it is).
        """
        t0 = time.perf_counter()
        detect_s = audit_s = 0.0
        dilation = scaled_dilation(self.cfg.dilation_px, image.shape)
        view = out = image
        mask = np.zeros(image.shape[:2], np.uint8)
        rejected0 = mask
        dets: list[Detection] = []
        residual: list[Detection] | None = None
        encoded: bytes | None = None
        for p in range(self.cfg.passes + 1):
            if p == self.cfg.passes and not self.cfg.audit:
                break
            t = time.perf_counter()
            found = self.find_text(view, [d for d in dets if d.kept])
            elapsed = time.perf_counter() - t
            for d in found:
                d.pass_index = p
            _admit_line_continuations(found, [d for d in [*dets, *found] if d.kept], image.shape, self.cfg)
            if p == 0:
                rejected0 = _box_map([d for d in found if not d.kept and d.source != SEGMENTED], image.shape)
            else:
                _keep_first_judgement(found, mask, rejected0, [d for d in dets if d.kept], self.cfg)
            dets += found
            new = text_mask(found, image.shape, dilation, self.cfg.bridge_gap)
            if not new.any() or p == self.cfg.passes:
                # The final search of the written pixels: the audit (pass 0 counts as detection).
                residual = [d for d in found if d.kept]
                audit_s += elapsed if p > 0 else 0.0
                detect_s += elapsed if p == 0 else 0.0
                break
            detect_s += elapsed
            out = self.inpainter.inpaint(out, new)
            mask = np.maximum(mask, new)
            if codec is not None:
                encoded = codec.encode(out)
                view = codec.decode(encoded)
            else:
                view = out
        if not self.cfg.audit:
            residual = None
        total_ms = (time.perf_counter() - t0) * 1e3
        return CleanResult(
            view,
            mask,
            dets,
            residual=residual,
            encoded=encoded,
            timings_ms={
                "detect": detect_s * 1e3,
                "inpaint": total_ms - (detect_s + audit_s) * 1e3,
                "audit": audit_s * 1e3,
            },
        )

    def residual(self, cleaned: np.ndarray) -> list[Detection]:
        """Text the same detector and filters find on an image (a fresh search, no memory of passes)."""
        return [d for d in self.find_text(cleaned) if d.kept]
