"""Procedural weld photos: labelled good/bad welds with exact text-overlay masks.

Why it exists: a demo dataset that works on any machine, ground truth for the text-removal stage and a
learnable good-vs-bad task for training tests, all without downloading anything.

How an image is made (``render_weld``):

* The weld is described in a *canonical* frame where the bead runs horizontally; a random camera
  (any bead angle, small offset, perspective tilt) maps it to the output, and every output pixel is
  evaluated at its canonical coordinates (no canvas is drawn and warped, which keeps the cost at S*S).
  The scene: a plate (steel grey, mill scale or stainless; brushed grain, mottling, optional rust) on a
  background (paper, concrete, dark bench, cutting mat) or filling the frame; a bead given as a height
  map (rounded cross-section, crescent/chevron ripples, slight wander) shaded with a random light
  (diffuse + specular); heat-tint bands (straw/bronze/purple/blue or dark oxide) beside it.
* Bad welds get 1-2 defects, drawn into the same height/darkening maps so the shading treats them as
  real relief: ``porosity`` (dark round pits with lit rims), ``crack`` (thin dark jagged lines along or
  across the bead, with branches), ``undercut`` (dark groove along a toe), ``spatter`` (small shaded
  droplets around the bead) and ``incomplete_fusion`` (irregular width, unfilled gaps exposing the
  dark joint, a dark unfused toe line).
* Class-independent photo effects follow: light gradient, vignette, flash hot spot, brightness,
  contrast, gamma, white balance, blur, sensor noise and an earlier lossy JPEG save.
* Optional text is composited last, from its own random stream: ``printed`` (Hershey fonts, IDs, dates,
  outlines), ``handwritten`` (script fonts with thick jittered strokes, marker circles/arrows/underlines),
  ``watermark`` (large faint text, single or tiled diagonally) and ``title`` (text on a dark banner).

Mask rules (two masks, ``text_mask`` within ``overlay_mask``):

* ``overlay_mask`` is exactly the set of pixels whose RGB value differs from the same render without text
  (``with_text=False`` with an identically seeded rng): every masked pixel changed, every other pixel is
  byte-identical. It includes title banners, marker loops, arrows and underlines.
* ``text_mask`` is the changed pixels that belong to glyphs: the characters of printed, handwritten,
  watermark and title text, including the anti-aliased fringe and, for printed text, its outline/shadow
  (drawn in the opposite ink as part of the characters). Banners, marker strokes, arrows and underlines are
  not text; glyph pixels of an earlier layer hidden under a later banner (alpha >= 0.5) or marker stroke are
  no longer text either. This is what an OCR-based remover is scored on; ``overlay_mask`` is informational.

Semi-transparent watermark contributions that change a pixel by fewer than ``WATERMARK_MIN_DELTA`` (8) grey
levels in every channel are not drawn at all, so faint invisible fringes are neither in the image nor in the
masks. The rules hold for the returned arrays and for ``png`` files; a ``jpg`` file adds compression ringing
of a few pixels around text edges (masks are always lossless PNG).

Labels are independent of everything but the defects: plate, lighting, camera and post effects come from
streams that do not see the label, and whether an image has text is decided identically for both classes.

Speed (``generate_dataset``, 320x320, render + JPEG + mask PNG, OpenCV/OMP limited to one thread, measured
as process CPU time on the shared 2-core dev box): about 36 images/s per core, i.e. ~28 ms per image.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "DEFECT_TYPES",
    "LABELS",
    "TEXT_KINDS",
    "VERSION",
    "ProceduralSpec",
    "SpecMismatchError",
    "WeldSample",
    "generate_dataset",
    "overlay_text",
    "render_weld",
]

VERSION = "weldray-procedural/2"
DEFECT_TYPES: tuple[str, ...] = ("porosity", "crack", "undercut", "spatter", "incomplete_fusion")
LABELS: tuple[str, ...] = ("good_weld", "bad_weld")
TEXT_KINDS: tuple[str, ...] = ("printed", "handwritten", "watermark", "title")
WATERMARK_MIN_DELTA = 8
JPEG_QUALITY = 92
#: Side folders beside the class folders (not images to train on).
MASK_DIRS = ("text_masks", "overlay_masks")
CSV_COLUMNS = ["path", "label", "defects", "text_kinds", "texts", "mask_path", "overlay_mask_path"]
_CLASS_DIRS = {"good_weld": ("good_welds", "good"), "bad_weld": ("bad_welds", "bad")}
_INCOMPLETE_MARKER = ".procedural_incomplete"
_GOLDEN = 0.6180339887498949
_Box = tuple[int, int, int, int]  # x, y, w, h of drawn text


@dataclass(frozen=True)
class ProceduralSpec:
    """What to generate; part of ``spec.json`` so a folder is never silently reused for another spec."""

    n_per_class: int = 60
    image_size: int = 320
    text_fraction: float = 0.5
    seed: int = 0
    defect_types: tuple[str, ...] = DEFECT_TYPES
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        def is_int(x: object) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        if not is_int(self.n_per_class) or self.n_per_class < 1:
            raise ValueError(f"n_per_class must be an int >= 1, got {self.n_per_class!r}")
        if not is_int(self.image_size) or not 32 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be an int in [32, 4096], got {self.image_size!r}")
        if (
            isinstance(self.text_fraction, bool)
            or not isinstance(self.text_fraction, (int, float, np.floating))
            or not 0.0 <= self.text_fraction <= 1.0
        ):
            raise ValueError(f"text_fraction must be a number in [0, 1], got {self.text_fraction!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        # Lists arrive from JSON/Hydra configs; store a tuple so the spec stays hashable.
        if isinstance(self.defect_types, str) or not isinstance(self.defect_types, (tuple, list)):
            raise ValueError(f"defect_types must be a tuple of names, got {self.defect_types!r}")
        unknown = [d for d in self.defect_types if d not in DEFECT_TYPES]
        if not self.defect_types or unknown or len(set(self.defect_types)) != len(self.defect_types):
            raise ValueError(
                f"defect_types must be a non-empty subset of {DEFECT_TYPES} without repeats, "
                f"got {self.defect_types!r}"
            )
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        object.__setattr__(self, "n_per_class", int(self.n_per_class))
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "text_fraction", float(self.text_fraction))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "defect_types", tuple(self.defect_types))

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["defect_types"] = list(self.defect_types)
        return d


class SpecMismatchError(ValueError):
    """``out_dir`` already holds a dataset generated from a different spec (or something else)."""


@dataclass
class WeldSample:
    image: np.ndarray  # HxWx3 uint8 RGB
    text_mask: np.ndarray  # HxW bool: glyph pixels (see the module docstring)
    label: str  # "good_weld" | "bad_weld"
    defects: list[str]  # empty for good
    text_kinds: list[str]  # subset of TEXT_KINDS
    texts: list[str]
    overlay_mask: np.ndarray  # HxW bool: every pixel the overlay changed (glyphs, banners, marker strokes)


# --------------------------------------------------------------------------------------------- noise


def _smooth1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """Zero-mean smooth noise in about [-1, 1] with features every ``cell`` pixels."""
    k = max(2, int(n / max(cell, 1.0)) + 2)
    g = rng.uniform(-1.0, 1.0, size=(1, k)).astype(np.float32)
    return cv2.resize(g, (n, 1), interpolation=cv2.INTER_CUBIC)[0]


def _smooth2d(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Cheap value noise (random grid, bicubic upsampling) in about [-1, 1]."""
    gh, gw = max(2, int(h / max(cell, 1.0)) + 2), max(2, int(w / max(cell, 1.0)) + 2)
    g = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _ramp(e: np.ndarray, stops: Sequence[float], colors: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour map of ``e`` through ``colors`` (len(stops) x 3); channel first."""
    return np.stack([np.interp(e, stops, colors[:, c]).astype(np.float32) for c in range(3)])


# ------------------------------------------------------------------------------------------- scene


@dataclass
class _Bead:
    """Bead geometry in the canonical frame (bead along +x near the origin), sampled per integer column
    x in [-half, half]; index = x + half."""

    yc: np.ndarray  # centre line y
    hw: np.ndarray  # half width
    fill: np.ndarray  # 1 = full bead, 0 = unfilled (incomplete fusion)
    hw0: float
    seam: float  # joint line y under the bead
    half: int

    def cols(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x + (self.half + 0.5)).astype(np.int32), 0, 2 * self.half)


@dataclass
class _Surface:
    """Per output pixel: canonical coordinates plus the relief and darkening maps that defects edit.

    Rendering straight into output pixels (instead of drawing a canonical canvas and warping it) keeps
    the work at S*S pixels, which is what makes the speed target."""

    hom: np.ndarray  # canonical -> output homography
    x: np.ndarray  # (S, S) canonical x of each output pixel
    y: np.ndarray
    xi: np.ndarray  # bead column index of each pixel
    v: np.ndarray  # signed distance from the bead centre line in half widths
    height: np.ndarray  # relief in pixels
    dark: np.ndarray  # multiplicative albedo darkening (1 = none)
    metal: np.ndarray  # extra bead-metal coverage (spatter droplets)

    def to_out(self, pts: np.ndarray) -> np.ndarray:
        """Canonical (N, 2) points -> output pixel coordinates (N, 2)."""
        return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), self.hom).reshape(
            -1, 2
        )

    def window(
        self, out_xy: np.ndarray, cx: float, cy: float, r: float
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        """Output pixels around a small round feature and their squared canonical distance / r^2."""
        s = self.x.shape[0]
        reach = 1.3 * r + 2
        x0, x1 = max(0, int(out_xy[0] - reach)), min(s, int(out_xy[0] + reach) + 1)
        y0, y1 = max(0, int(out_xy[1] - reach)), min(s, int(out_xy[1] + reach) + 1)
        sl = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
        return sl, ((self.x[sl] - cx) ** 2 + (self.y[sl] - cy) ** 2) / (r * r)


def _camera(base: np.random.Generator, s: int) -> np.ndarray:
    """Homography canonical -> output: random bead angle, small offset and perspective tilt."""
    if base.random() < 0.6:
        theta = base.uniform(0, math.pi)
    else:  # photographers like horizontal/vertical beads
        theta = base.normal(0, 0.15) + base.choice([0.0, math.pi / 2])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    t = np.array([s / 2, s / 2]) + base.uniform(-0.04, 0.04, 2) * s
    corners = np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float64)
    src = (corners + base.uniform(-0.04, 0.04, (4, 2)) * s - t) @ rot  # inverse rotation
    return cv2.getPerspectiveTransform(src.astype(np.float32), corners.astype(np.float32))


def _canonical_coords(hom: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    inv = np.linalg.inv(hom).astype(np.float32)
    u, v = np.arange(s, dtype=np.float32)[None, :], np.arange(s, dtype=np.float32)[:, None]
    w = inv[2, 0] * u + inv[2, 1] * v + inv[2, 2]
    return (inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]) / w, (inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]) / w


def _plate_albedo(rng: np.random.Generator, s: int, rows: np.ndarray, hw0: float) -> np.ndarray:
    """Plate + background albedo (3 x S x S, 0..1): brushed grain, mottling, rust, edges and shadows.

    ``rows`` is each pixel's canonical distance across the bead from the joint line."""
    u = s / 320.0
    style = rng.choice(3, p=[0.55, 0.25, 0.2])  # steel, dark mill scale, bright stainless
    grey = [rng.uniform(0.36, 0.6), rng.uniform(0.15, 0.3), rng.uniform(0.58, 0.78)][style]
    tint = 1.0 + rng.uniform(-0.025, 0.025, 3) + np.array([-0.02, 0.0, 0.03]) * rng.uniform(-1, 1.5)
    grain = (rng.random((s, s), dtype=np.float32) - 0.5) * 3.46  # unit variance, cheaper than normal
    k = max(3, int(rng.uniform(0.05, 0.25) * s))
    brushed = cv2.blur(grain, (k, 1) if rng.random() < 0.5 else (1, k)) * math.sqrt(k)
    fine = cv2.GaussianBlur(grain, (0, 0), 0.7 * u)
    lum = grey * (
        1.0
        + rng.uniform(0.03, 0.12) * _smooth2d(rng, s, s, s * rng.uniform(0.15, 0.4))
        + rng.uniform(0.01, 0.04) * brushed
        + rng.uniform(0.03, 0.08) * fine
    )
    alb = lum[None] * tint.astype(np.float32)[:, None, None]
    if rng.random() < 0.35:  # rust: mottled brown patches with darker pitting
        field = _smooth2d(rng, s, s, s * rng.uniform(0.06, 0.2)) + 0.5 * _smooth2d(rng, s, s, s * 0.03)
        w = np.clip((field - rng.uniform(0.0, 0.8)) / 0.5, 0, 1) * rng.uniform(0.4, 0.9)
        rust = np.array([0.5, 0.3, 0.17], np.float32)[:, None, None] * rng.uniform(0.6, 1.15)
        alb = alb * (1 - w) + rust * ((1.0 + 0.2 * fine + 0.2 * field) * w)
    bg = [
        np.array([0.86, 0.86, 0.84]) * rng.uniform(0.85, 1.05),  # paper / white bench
        np.array([0.5, 0.5, 0.48]) * rng.uniform(0.8, 1.1),  # concrete
        np.array([0.16, 0.15, 0.14]) * rng.uniform(0.7, 1.3),  # dark workbench
        np.array([0.32, 0.4, 0.36]) * rng.uniform(0.7, 1.2),  # cutting mat
    ][rng.choice(4)].astype(np.float32)[:, None, None]
    up, down = (s * rng.uniform(0.2, 0.45) + hw0 * 3 for _ in range(2))
    shadow = rng.uniform(0.2, 0.6)
    edge_gain = rng.uniform(-0.25, 0.35)
    bg_mottle = _smooth2d(rng, s, s, s * 0.2)
    if rng.random() < 0.45:  # the plate fills the frame
        return np.clip(alb, 0, 1)
    inner = np.minimum(up + rows, down - rows)  # > 0 on the plate
    inside = np.clip(inner + 0.5, 0, 1)
    shade = 1.0 - shadow * np.exp(np.minimum(inner, 0) / (6 * u))
    bg_px = bg * ((1.0 + 0.04 * bg_mottle + 0.02 * fine) * shade)
    alb = alb * (1.0 + edge_gain * np.exp(-((inner / (1.2 * u)) ** 2)))
    return np.clip(alb * inside + bg_px * (1 - inside), 0, 1)


# ----------------------------------------------------------------------------------------- defects


def _view_x(rng: np.random.Generator, s: int, n: int) -> np.ndarray:
    """Canonical columns that stay inside the output for any angle (|x| <= 0.38 S around the centre)."""
    return rng.uniform(-0.38, 0.38, size=n) * s


def _fusion_geometry(rng: np.random.Generator, bead: _Bead, s: int) -> None:
    """Incomplete fusion, geometry part: irregular width, wandering line and unfilled gaps."""
    hw0, n = bead.hw0, len(bead.hw)
    bead.hw *= 1.0 + rng.uniform(0.2, 0.35) * _smooth1d(rng, n, hw0 * rng.uniform(1.5, 3.0))
    bead.yc += hw0 * rng.uniform(0.15, 0.35) * _smooth1d(rng, n, hw0 * 2)
    cols = np.arange(n, dtype=np.float32) - bead.half
    for x0 in _view_x(rng, s, int(rng.integers(1, 3))):
        ragged = hw0 * rng.uniform(0.7, 1.8) * (1 + 0.3 * _smooth1d(rng, n, hw0))
        gap = np.clip((ragged - np.abs(cols - x0)) / (0.5 * hw0), 0, 1)
        bead.fill *= 1.0 - gap * rng.uniform(0.85, 1.0)


def _fusion_marks(rng: np.random.Generator, surf: _Surface, bead: _Bead, s: int) -> None:
    """Incomplete fusion, surface part: exposed dark joint in the gaps and a dark unfused toe line."""
    hw0 = bead.hw0
    open_ = (1.0 - np.clip(bead.fill * 1.5, 0, 1))[surf.xi]
    seam = np.exp(-(((surf.y - bead.seam) / max(1.5, hw0 * rng.uniform(0.15, 0.3))) ** 2)) * open_
    surf.dark *= 1.0 - 0.85 * seam
    surf.height -= hw0 * 0.4 * seam
    side = float(rng.choice([-1.0, 1.0]))
    toe = np.exp(-((((surf.v - side) * bead.hw[surf.xi]) / max(1.2, 0.1 * hw0)) ** 2))
    seg = np.clip(1.2 - np.abs(surf.x - _view_x(rng, s, 1)[0]) / (0.25 * s), 0, 1)
    surf.dark *= 1.0 - 0.7 * toe * seg


def _porosity(rng: np.random.Generator, surf: _Surface, bead: _Bead, s: int) -> None:
    """Round pits in the bead: deep relief (lit rims) and dark interiors."""
    n = int(rng.integers(5, 16))
    if rng.random() < 0.5:  # clustered
        xs = np.clip(_view_x(rng, s, 1)[0] + rng.normal(0, bead.hw0 * 2.0, n), -0.45 * s, 0.45 * s)
    else:
        xs = _view_x(rng, s, n)
    xi = bead.cols(xs)
    ys = bead.yc[xi] + rng.uniform(-0.55, 0.55, n) * bead.hw[xi]
    rs = np.maximum(0.017 * s, bead.hw0 * rng.uniform(0.16, 0.36, n))
    for (cx, cy, r), out in zip(
        zip(xs, ys, rs, strict=True), surf.to_out(np.stack([xs, ys], 1)), strict=True
    ):
        sl, d2 = surf.window(out, cx, cy, r)
        surf.height[sl] -= 0.9 * r * np.sqrt(np.clip(1 - d2, 0, None))
        surf.dark[sl] *= np.where(d2 < 1, 0.12 + 0.3 * d2, 1.0)


def _crack(rng: np.random.Generator, surf: _Surface, bead: _Bead, s: int) -> None:
    """Thin dark jagged polylines (longitudinal or transverse) with short branches."""
    hw0 = bead.hw0
    thick = max(1, int(round(s * rng.uniform(0.009, 0.014))))
    paths = []
    if rng.random() < 0.6:  # longitudinal, near the centre line
        length = s * rng.uniform(0.3, 0.55)
        xs = _view_x(rng, s, 1)[0] + np.arange(-length / 2, length / 2, max(2.0, hw0 * 0.25))
        v = rng.uniform(-0.3, 0.3) + np.cumsum(rng.normal(0, 0.08, len(xs)))
        xi = bead.cols(xs)
        paths.append(np.stack([xs, bead.yc[xi] + np.clip(v, -0.7, 0.7) * bead.hw[xi]], 1))
    else:  # transverse, across the bead into the heat-affected zone
        for x0 in _view_x(rng, s, int(rng.integers(1, 4))):
            xi = bead.cols(np.array([x0]))[0]
            vs = np.linspace(-rng.uniform(1.0, 1.4), rng.uniform(1.0, 1.4), 12)
            xs = x0 + np.cumsum(rng.normal(0, hw0 * 0.12, len(vs)))
            paths.append(np.stack([xs, bead.yc[xi] + vs * bead.hw[xi]], 1))
    for p in list(paths):  # branches
        for _ in range(int(rng.integers(0, 3))):
            steps = rng.normal(0, hw0 * 0.25, (4, 2)) + rng.uniform(-1, 1, 2) * hw0 * 0.25
            paths.append(p[rng.integers(len(p))] + np.cumsum(steps, 0))
    layer = np.zeros(surf.height.shape, np.uint8)
    for p in paths:
        pts = np.round(surf.to_out(p) * 4).astype(np.int32)[None]  # 2 fractional bits
        cv2.polylines(layer, pts, False, 255, thick, cv2.LINE_AA, shift=2)
    m = layer.astype(np.float32) / 255.0
    halo = np.clip(cv2.GaussianBlur(m, (0, 0), max(1.0, thick * 1.5)) * 2, 0, 1)
    surf.dark *= (1.0 - 0.9 * m) * (1.0 - 0.35 * halo)
    surf.height -= m * hw0 * 0.15


def _undercut(rng: np.random.Generator, surf: _Surface, bead: _Bead, s: int) -> None:
    """A dark groove melted into the plate along one or both toes over a long section."""
    hw0, n = bead.hw0, len(bead.hw)
    cols = np.arange(n, dtype=np.float32) - bead.half
    sides = [-1.0, 1.0] if rng.random() < 0.3 else [float(rng.choice([-1.0, 1.0]))]
    for side in sides:
        width = max(0.011 * s, hw0 * rng.uniform(0.2, 0.32))
        x0, half = _view_x(rng, s, 1)[0] * 0.5, s * rng.uniform(0.3, 0.6)
        wob = 1.0 + rng.uniform(0.02, 0.08) * _smooth1d(rng, n, hw0 * 2)
        yg = bead.yc + side * (bead.hw * wob + width * 0.3)
        depth = np.clip(0.55 + 0.7 * _smooth1d(rng, n, hw0 * 1.5), 0.2, 1.0)  # intermittent notches
        seg = np.clip((half - np.abs(cols - x0)) / (hw0 * 1.5), 0, 1) * depth
        g = np.exp(-(((surf.y - yg[surf.xi]) / width) ** 4)) * seg[surf.xi]  # flat-bottomed groove
        surf.height -= g * hw0 * 0.35
        surf.dark *= 1.0 - 0.85 * g


def _spatter(rng: np.random.Generator, surf: _Surface, bead: _Bead, s: int) -> None:
    """Small shaded metal droplets beside (and a few on) the bead, each with a faint burn mark."""
    n = int(rng.integers(40, 110))
    xs = _view_x(rng, s, n) * 1.1
    xi = bead.cols(xs)
    dist = np.where(rng.random(n) < 0.15, rng.uniform(-1, 0, n), np.minimum(rng.exponential(1.3, n), 4.0))
    ys = bead.yc[xi] + rng.choice([-1.0, 1.0], n) * bead.hw[xi] * (1.0 + dist)
    rs = np.maximum(0.011 * s, bead.hw0 * rng.uniform(0.08, 0.2, n))
    for (cx, cy, r), out in zip(
        zip(xs, ys, rs, strict=True), surf.to_out(np.stack([xs, ys], 1)), strict=True
    ):
        sl, d2 = surf.window(out, cx, cy, 2.5 * r)
        d2 *= 6.25  # distance in droplet radii
        dome = np.sqrt(np.clip(1 - d2, 0, None))
        surf.height[sl] += 0.9 * r * dome
        surf.metal[sl] = np.maximum(surf.metal[sl], np.clip(dome * 3, 0, 1))
        surf.dark[sl] *= 1.0 - 0.45 * np.exp(-d2 / 4.0) * (d2 >= 0.8)


_SURFACE_DEFECTS: dict[str, Callable[[np.random.Generator, _Surface, _Bead, int], None]] = {
    "porosity": _porosity,
    "crack": _crack,
    "undercut": _undercut,
    "spatter": _spatter,
    "incomplete_fusion": _fusion_marks,
}


# ---------------------------------------------------------------------------------------- rendering

_TINT_STOPS = (0.0, 0.25, 0.5, 0.75, 1.0)
_TINT_RAINBOW = [[0.9, 0.78, 0.42], [0.75, 0.48, 0.25], [0.5, 0.3, 0.52], [0.3, 0.42, 0.7], [0.5, 0.5, 0.52]]
_TINT_OXIDE = [[0.3, 0.25, 0.2], [0.3, 0.24, 0.2], [0.32, 0.29, 0.28], [0.37, 0.36, 0.37], [0.45, 0.45, 0.45]]
_TINT_LUTS = [  # 256-entry colour tables indexed by distance from the toe, channel first
    _ramp(np.linspace(0, 1, 256), _TINT_STOPS, np.array(colors, np.float32))
    for colors in (_TINT_RAINBOW, _TINT_OXIDE)
]


def _scene(
    base: np.random.Generator, drng: np.random.Generator, label: str, s: int, defect_types: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """RGB scene (3 x S x S, 0..1) before photo effects, weld-zone mask and defect list.

    ``base`` draws everything a good weld needs, in a fixed order; ``drng`` draws only defects, so the
    same ``base`` gives the same plate, light and camera whatever the label."""
    u = s / 320.0
    half = int(math.ceil(0.85 * s))
    n = 2 * half + 1
    hw0 = s * base.uniform(0.035, 0.09)
    seam = s * base.uniform(-0.1, 0.1)
    bead = _Bead(
        yc=(seam + hw0 * base.uniform(0.03, 0.25) * _smooth1d(base, n, hw0 * 8)).astype(np.float32),
        hw=(hw0 * (1 + base.uniform(0.02, 0.06) * _smooth1d(base, n, hw0 * 3))).astype(np.float32),
        fill=np.ones(n, np.float32),
        hw0=hw0,
        seam=seam,
        half=half,
    )
    hom = _camera(base, s)
    cx, cy = _canonical_coords(hom, s)
    albedo = _plate_albedo(base, s, cy - seam, hw0)
    # Bead look, drawn before any defect so the base stream is label independent.
    period = hw0 * base.uniform(0.3, 0.7)
    curve = float(base.choice([-1.0, 1.0])) * base.uniform(0.4, 1.3)
    jitter = 0.3 * _smooth1d(base, n, hw0 * 4) + 0.1 * _smooth1d(base, n, period)
    ripple_amp = base.uniform(0.04, 0.13) * (1 + 0.4 * _smooth1d(base, n, hw0 * 3))
    ripple_pow = base.uniform(1.2, 2.5)
    hscale = hw0 * base.uniform(0.3, 0.6)
    hz = hw0 * base.uniform(0.8, 2.5)
    tint_kind = int(base.choice(3, p=[0.45, 0.4, 0.15]))
    tint_strength = [base.uniform(0.4, 0.85), base.uniform(0.3, 0.75), 0.0][tint_kind]
    tint_wobble = 1 + 0.25 * _smooth1d(base, n, hw0 * 3)
    metal = np.array([0.78, 0.78, 0.8], np.float32) * base.uniform(0.45, 1.1)  # dull MIG .. bright TIG
    metal = (metal * (1 + np.array([0.07, 0.02, -0.07], np.float32) * base.uniform(-1, 2.5)))[:, None, None]
    bead_grain = _smooth2d(base, s, s, max(2.0, 3 * u))
    grain_amp = base.uniform(0.04, 0.12)
    az, el = base.uniform(0, 2 * math.pi), base.uniform(math.radians(30), math.radians(70))
    amb, shin, spec_gain = base.uniform(0.25, 0.45), base.uniform(12, 40), base.uniform(0.25, 0.6)

    defects: list[str] = []
    if label == "bad_weld":
        order = [d for d in DEFECT_TYPES if d in defect_types]
        picks = {order[int(drng.integers(len(order)))]}
        if len(order) > 1 and drng.random() < 0.3:
            picks.add(order[int(drng.integers(len(order)))])
        defects = [d for d in order if d in picks]
        if "incomplete_fusion" in defects:
            _fusion_geometry(drng, bead, s)

    xi = bead.cols(cx)
    fill = bead.fill[xi]
    hw = bead.hw[xi] * (0.4 + 0.6 * fill)  # the bead thins out toward unfilled gaps
    v = (cy - bead.yc[xi]) / hw
    p = np.clip(1.0 - v * v, 0.0, 1.0)
    # Relief: rounded profile with crescent ripples (chevrons pointing along the travel direction).
    phase = (cx + curve * hw * p) / period + jitter[xi]
    ripple = (phase - np.floor(phase)) ** ripple_pow
    relief = 1.0 + ripple_amp[xi] * (ripple - 0.5) + 0.5 * grain_amp * bead_grain
    height = hscale * fill * np.sqrt(p) * relief
    surf = _Surface(hom, cx, cy, xi, v, height, np.ones_like(height), np.zeros_like(height))

    # Heat tint beside the bead (and around unfilled gaps), irregular along the bead.
    dist = (np.abs(cy - bead.yc[xi]) - hw * np.maximum(fill, 0.3)) / hz
    e = np.clip(dist * tint_wobble[xi], 0, 1)
    tint_w = tint_strength * (1.0 - e) ** 1.5
    lut, idx = _TINT_LUTS[min(tint_kind, 1)], (e * 255 + 0.5).astype(np.intp)
    plate = np.stack([a + (np.take(lut[c], idx) - a) * tint_w for c, a in enumerate(albedo)])
    seam_line = np.exp(-(((cy - seam) / max(1.0, 1.2 * u)) ** 2)) * (1 - np.clip(fill * 4, 0, 1))
    plate *= 1.0 - 0.5 * seam_line
    # Bead metal: ripple valleys darker, oxidised toward the toes.
    bead_alb = metal * ((0.65 + 0.35 * p) * (1.0 - 0.15 * ripple) * (1.0 + grain_amp * bead_grain))

    for d in defects:
        _SURFACE_DEFECTS[d](drng, surf, bead, s)

    # Shade the relief: diffuse + Blinn specular, normalised so a flat plate keeps its albedo.
    hs = cv2.GaussianBlur(surf.height, (0, 0), max(0.6, 0.8 * u))
    gx = cv2.Sobel(hs, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(hs, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32)
    halfway = light + np.array([0, 0, 1], np.float32)
    halfway /= np.linalg.norm(halfway)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    ndl = np.clip((light[2] - gx * light[0] - gy * light[1]) * inv, 0, 1)
    ndh = np.clip((halfway[2] - gx * halfway[0] - gy * halfway[1]) * inv, 0, 1)
    diffuse = (amb + (1 - amb) * ndl) / (amb + (1 - amb) * light[2])
    spec = spec_gain * np.clip(ndh**shin - halfway[2] ** shin, 0, 1)

    cover = np.maximum(np.clip(p * 6, 0, 1) * np.clip(fill * 3, 0, 1), surf.metal)
    surface = plate * (1 - cover) + bead_alb * cover
    shaded = surface * (diffuse * surf.dark) + spec * (0.3 + 0.7 * cover)
    return shaded, np.abs(v) < 6.0, defects


def _photo(base: np.random.Generator, img: np.ndarray, s: int) -> np.ndarray:
    """Class-independent photo effects on a 3 x S x S scene; returns S x S x 3 uint8 RGB."""
    u = s / 320.0
    xx = np.arange(s, dtype=np.float32)[None, :] / s - 0.5
    yy = xx.reshape(-1, 1)
    ang = base.uniform(0, 2 * math.pi)
    light = 1.0 + base.uniform(-0.45, 0.45) * (xx * math.cos(ang) + yy * math.sin(ang))
    light *= 1.0 - base.uniform(0, 0.5) * (xx * xx + yy * yy)
    if base.random() < 0.3:  # flash hot spot
        cx, cy = base.uniform(-0.4, 0.4, 2)
        light += base.uniform(0.1, 0.4) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / base.uniform(0.02, 0.1))
    light *= base.uniform(0.7, 1.3)
    wb = 1.0 + base.uniform(-0.06, 0.06, 3)
    # Contrast pivots on a constant (not the image mean) so a defect never shifts the whole image.
    contrast, gamma = base.uniform(0.75, 1.3), base.uniform(0.8, 1.25)
    planes = [np.clip((c * (light * w) - 0.5) * contrast + 0.5, 0, 1) for c, w in zip(img, wb, strict=True)]
    if base.random() < 0.5:
        sigma = base.uniform(0.3, 1.1) * u
        planes = [cv2.GaussianBlur(plane, (0, 0), sigma) for plane in planes]
    noise_std = base.uniform(0.004, 0.025)
    noise = (base.random((s, s), dtype=np.float32) - 0.5) * (3.46 * noise_std)  # uniform, cheaper than normal
    out = np.clip(cv2.merge([plane + noise for plane in planes]) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(out, np.clip(255.0 * np.linspace(0, 1, 256) ** gamma + 0.5, 0, 255).astype(np.uint8))
    if base.random() < 0.6:  # an earlier lossy save
        quality = int(base.integers(35, 91))
        _, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


# -------------------------------------------------------------------------------------------- text

_PRINT_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
)
_SCRIPT_FONTS = (cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX, cv2.FONT_HERSHEY_SIMPLEX)
_INK = np.float32(  # white, black, yellow, red, orange, cyan, green
    [
        [255, 255, 255],
        [15, 15, 15],
        [255, 220, 40],
        [230, 40, 30],
        [255, 140, 0],
        [60, 220, 255],
        [40, 200, 70],
    ]
)
_MARKER = np.array([[20, 20, 20], [210, 25, 25], [25, 60, 200], [20, 140, 50]], np.float32)
# Label-neutral vocabulary: no word hints at good or bad, and none contains ';' (the CSV list separator).
_WORDS = ("Joint", "Plate", "Sample", "Coupon", "Heat", "Batch", "Pass", "Cam", "Lot", "Bay")
_PROCESS = ("GMAW", "GTAW", "SMAW", "FCAW", "MIG 180A", "TIG 3/32", "ER70S-6", "E7018", "308L", "6G", "3F")
_NOTES = ("recheck", "see note", "x-ray 2", "cut here", "side B", "v2", "L=40mm", "T. Baker", "#7", "A3")
_WATERMARKS = ("WELDRAY", "SAMPLE", "PREVIEW", "(c) WeldLab", "weldshop.example", "@weld_bench", "DRAFT")
_TITLES = (
    "Weld Inspection",
    "Root Pass - 3G",
    "MIG vs TIG",
    "Practice Plate",
    "Lesson 4: Bead Ripples",
    "Shop Log",
    "Fillet Weld Basics",
    "Stainless Walking the Cup",
)


def _random_text(rng: np.random.Generator) -> str:
    kind = rng.integers(6)
    if kind == 0:
        return f"W-{int(rng.integers(100, 10000))}"
    if kind == 1:
        y, m, d = int(rng.integers(2015, 2027)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        return f"{y}-{m:02d}-{d:02d}" if rng.random() < 0.5 else f"{m:02d}/{d:02d}/{y}"
    if kind == 2:
        return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}"
    if kind == 3:
        return f"{rng.choice(_WORDS)} {int(rng.integers(1, 99))}{rng.choice(['', 'A', 'B', 'C'])}"
    if kind == 4:
        return str(rng.choice(_PROCESS))
    return f"ID {int(rng.integers(10000, 99999))}-{rng.choice(['A', 'B', 'X', 'R'])}"


def _fit_scale(text: str, font: int, height: float, thickness: int, max_w: float) -> float:
    (w, h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    return max(0.2, min(height / max(h, 1), max_w / max(w, 1)))


def _place(rng: np.random.Generator, w: int, h: int, s: int, taken: list[_Box]) -> tuple[int, int]:
    """Top-left corner for a w x h box inside the frame, away from earlier text boxes when possible."""
    for _ in range(12):
        x, y = int(rng.integers(0, max(1, s - w))), int(rng.integers(0, max(1, s - h)))
        if all(x + w + 4 <= a or a + c + 4 <= x or y + h + 4 <= b or b + d + 4 <= y for a, b, c, d in taken):
            break
    taken.append((x, y, w, h))
    return x, y


def _blend(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Alpha-composite a flat colour; pixels with alpha == 0 stay byte-identical."""
    x, y, w, h = cv2.boundingRect((alpha > 0).view(np.uint8))
    out = img.copy()
    if w and h:
        sub = img[y : y + h, x : x + w].astype(np.float32)
        a = alpha[y : y + h, x : x + w, None]
        out[y : y + h, x : x + w] = np.clip(sub + (color - sub) * a + 0.5, 0, 255).astype(np.uint8)
    return out


def _printed(
    rng: np.random.Generator, img: np.ndarray, texts: list[str], taken: list[_Box], glyphs: np.ndarray
) -> np.ndarray:
    s = img.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        text = _random_text(rng)
        font = int(rng.choice(_PRINT_FONTS)) | (cv2.FONT_ITALIC if rng.random() < 0.2 else 0)
        thick = max(1, int(round(s * rng.uniform(0.003, 0.009))))
        scale = _fit_scale(text, font, s * rng.uniform(0.035, 0.09), thick, s * 0.9)
        (w, h), base = cv2.getTextSize(text, font, scale, thick)
        x, y = _place(rng, w + 2 * thick, h + base + 2 * thick, s, taken)
        org = (x + thick, y + h + thick)
        color = _INK[rng.integers(len(_INK))]
        if rng.random() < 0.4:  # outline/shadow in the opposite ink, like captions
            layer = np.zeros((s, s), np.uint8)
            cv2.putText(layer, text, org, font, scale, 255, thick + max(2, thick), cv2.LINE_AA)
            img = _blend(img, layer / np.float32(255), 255.0 - color)
            glyphs |= layer > 0
        layer = np.zeros((s, s), np.uint8)
        cv2.putText(layer, text, org, font, scale, 255, thick, cv2.LINE_AA)
        img = _blend(img, layer / np.float32(255), color)
        glyphs |= layer > 0
        texts.append(text)
    return img


def _jitter(rng: np.random.Generator, layers: Sequence[np.ndarray], amp: float) -> list[np.ndarray]:
    """Wobble drawn layers with one smooth displacement field (hand tremor)."""
    s = layers[0].shape[0]
    grid = np.arange(s, dtype=np.float32)
    mx = grid[None, :] + amp * _smooth2d(rng, s, s, s * 0.06)
    my = grid[:, None] + amp * _smooth2d(rng, s, s, s * 0.06)
    return [cv2.remap(layer, mx, my, cv2.INTER_LINEAR, borderValue=0) for layer in layers]


def _handwritten(
    rng: np.random.Generator, img: np.ndarray, texts: list[str], taken: list[_Box], glyphs: np.ndarray
) -> np.ndarray:
    s = img.shape[0]
    layer = np.zeros((s, s), np.uint8)
    thick = max(2, int(round(s * rng.uniform(0.006, 0.014))))
    text = str(rng.choice(_NOTES)) if rng.random() < 0.6 else _random_text(rng)
    font = int(rng.choice(_SCRIPT_FONTS))
    scale = _fit_scale(text, font, s * rng.uniform(0.05, 0.11), thick, s * 0.8)
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    x, y = _place(rng, w + 2 * thick, h + base + 4 * thick, s, taken)
    org = (x + thick, y + h + thick)
    cv2.putText(layer, text, org, font, scale, 255, thick, cv2.LINE_AA)
    letters = layer.copy()  # the glyphs alone; ``layer`` gains the marker strokes
    texts.append(text)
    for _ in range(int(rng.integers(0, 3))):  # marker strokes: loop, arrow or underline
        kind = rng.integers(3)
        if kind == 0:
            cx, cy = rng.uniform(0.2, 0.8, 2) * s
            rx, ry = rng.uniform(0.06, 0.2, 2) * s
            t = np.linspace(0, 2 * math.pi * rng.uniform(1.05, 1.25), 60) + rng.uniform(0, 2 * math.pi)
            wob = 1 + 0.06 * _smooth1d(rng, 60, 15)
            pts = np.stack([cx + rx * wob * np.cos(t), cy + ry * wob * np.sin(t)], 1)
        elif kind == 1:
            p0, p1 = rng.uniform(0.1, 0.9, (2, 2)) * s
            d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-6)
            head = s * 0.04
            left = p1 - head * (d * 0.9 + np.array([-d[1], d[0]]) * 0.5)
            right = p1 - head * (d * 0.9 - np.array([-d[1], d[0]]) * 0.5)
            pts = np.stack([p0, p1, left, p1, right])
        else:
            x0, y0 = org[0] + rng.uniform(-0.05, 0.05) * s, org[1] + base + thick * 2
            xs = np.linspace(x0, x0 + w * rng.uniform(0.7, 1.1), 20)
            pts = np.stack([xs, y0 + s * 0.006 * _smooth1d(rng, 20, 4)], 1)
        pts = np.round(pts * 4).astype(np.int32)[None]
        cv2.polylines(layer, pts, False, 255, thick, cv2.LINE_AA, shift=2)
    layer, letters = _jitter(rng, [layer, letters], s * rng.uniform(0.002, 0.006))
    glyphs &= ~((layer >= 128) & (letters == 0))  # earlier text hidden under an opaque marker stroke
    glyphs |= letters > 0
    alpha = layer / np.float32(255) * np.float32(rng.uniform(0.85, 1.0))
    return _blend(img, alpha, _MARKER[rng.integers(len(_MARKER))])


def _watermark(
    rng: np.random.Generator, img: np.ndarray, texts: list[str], taken: list[_Box], glyphs: np.ndarray
) -> np.ndarray:
    s = img.shape[0]
    text = str(rng.choice(_WATERMARKS))
    font = int(rng.choice(_PRINT_FONTS[:4]))
    thick = max(1, int(round(s * rng.uniform(0.006, 0.02))))
    big = 2 * s  # draw unrotated on a larger canvas, then rotate into the frame
    layer = np.zeros((big, big), np.uint8)
    if rng.random() < 0.5:  # tiled diagonal pattern
        scale = _fit_scale(text, font, s * rng.uniform(0.05, 0.09), thick, s * 0.6)
        (w, h), _ = cv2.getTextSize(text, font, scale, thick)
        step_x, step_y = int(w * rng.uniform(1.2, 1.6)), int(h * rng.uniform(2.5, 4.0))
        for row, y in enumerate(range(h, big, step_y)):
            for x in range(-(row % 2) * step_x // 2, big, step_x):
                cv2.putText(layer, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
    else:
        scale = _fit_scale(text, font, s * rng.uniform(0.1, 0.2), thick, s * 0.95)
        (w, h), _ = cv2.getTextSize(text, font, scale, thick)
        cv2.putText(layer, text, ((big - w) // 2, (big + h) // 2), font, scale, 255, thick, cv2.LINE_AA)
    rot = cv2.getRotationMatrix2D((s, s), rng.uniform(-40, 40), 1.0)
    rot[:, 2] -= s / 2 + rng.uniform(-0.15, 0.15, 2) * s
    alpha = cv2.warpAffine(layer, rot, (s, s), flags=cv2.INTER_LINEAR) / np.float32(255)
    alpha *= np.float32(rng.uniform(0.15, 0.4))
    color = np.float32([255, 255, 255]) if rng.random() < 0.7 else np.float32([30, 30, 30])
    out = _blend(img, alpha, color)
    visible = np.abs(out.astype(np.int16) - img.astype(np.int16)).max(axis=-1) >= WATERMARK_MIN_DELTA
    texts.append(text)
    glyphs |= visible
    return np.where(visible[..., None], out, img)


def _title(
    rng: np.random.Generator, img: np.ndarray, texts: list[str], taken: list[_Box], glyphs: np.ndarray
) -> np.ndarray:
    s = img.shape[0]
    text = str(rng.choice(_TITLES))
    bar_h = int(s * rng.uniform(0.09, 0.15))
    font = int(rng.choice(_PRINT_FONTS[:4]))
    thick = max(1, int(round(s * rng.uniform(0.004, 0.008))))
    scale = _fit_scale(text, font, bar_h * 0.5, thick, s * 0.9)
    (w, h), _ = cv2.getTextSize(text, font, scale, thick)
    top = 0 if rng.random() < 0.5 else s - bar_h
    banner = np.zeros((s, s), np.float32)
    if rng.random() < 0.6:  # full-width video banner
        banner[top : top + bar_h] = 1.0
        taken.append((0, top, s, bar_h))
        x = (s - w) // 2 if rng.random() < 0.5 else int(s * 0.04)
    else:  # caption box hugging the text
        x = int(rng.integers(0, max(1, s - w - bar_h // 2)))
        banner[top : top + bar_h, x : x + w + bar_h // 2] = 1.0
        taken.append((x, top, w + bar_h // 2, bar_h))
        x += bar_h // 4
    bar_color = np.float32([[10, 10, 10], [15, 25, 60], [70, 15, 15], [40, 40, 45]][rng.integers(4)])
    img = _blend(img, banner * np.float32(rng.uniform(0.6, 0.9)), bar_color)
    glyphs &= banner == 0  # a watermark under the banner is hidden (alpha >= 0.6)
    layer = np.zeros((s, s), np.uint8)
    cv2.putText(layer, text, (x, top + (bar_h + h) // 2), font, scale, 255, thick, cv2.LINE_AA)
    img = _blend(img, layer / np.float32(255), _INK[[0, 2][rng.integers(2)]])
    glyphs |= layer > 0
    texts.append(text)
    return img


_TEXT_RENDERERS = {"watermark": _watermark, "title": _title, "printed": _printed, "handwritten": _handwritten}
_TEXT_PROBS = {"printed": 0.55, "handwritten": 0.35, "watermark": 0.3, "title": 0.3}


def overlay_text(
    rng: np.random.Generator, img: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Composite 1-4 overlay kinds (watermark under titles under printed under handwritten) onto a square
    8-bit RGB image: any background, so a text segmenter can also learn real plates as "not text".

    Returns the image, the glyph mask (bool, changed pixels only, the ``text_mask`` rules), kinds and texts."""
    if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[2] != 3:
        raise ValueError(f"overlay_text needs a square HxWx3 image, got shape {img.shape}")
    kinds = [k for k in TEXT_KINDS if rng.random() < _TEXT_PROBS[k]] or [TEXT_KINDS[rng.integers(4)]]
    texts: list[str] = []
    taken: list[_Box] = []  # boxes of drawn text, so items rarely overlap
    glyphs = np.zeros(img.shape[:2], bool)
    out = img
    for k in ("watermark", "title", "printed", "handwritten"):
        if k in kinds:
            out = _TEXT_RENDERERS[k](rng, out, texts, taken, glyphs)
    return out, glyphs & (out != img).any(axis=-1), [k for k in TEXT_KINDS if k in kinds], texts


# --------------------------------------------------------------------------------------- public API


def _render(
    rng: np.random.Generator, label: str, size: int, with_text: bool, defect_types: Sequence[str]
) -> tuple[WeldSample, np.ndarray]:
    """``render_weld`` plus the weld-zone mask (bead, heat tint, spatter reach) in output pixels."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if label == "bad_weld" and (not defect_types or any(d not in DEFECT_TYPES for d in defect_types)):
        raise ValueError(f"defect_types must be a non-empty subset of {DEFECT_TYPES}, got {defect_types!r}")
    # Separate streams: the photo never depends on the label's defect draws or on the text, so the same
    # rng with and without text gives byte-identical pixels outside the text mask.
    base, drng, trng = (np.random.default_rng(int(x)) for x in rng.integers(0, 2**63 - 1, size=3))
    scene, zone, defects = _scene(base, drng, label, size, defect_types)
    image = _photo(base, scene, size)
    kinds: list[str] = []
    texts: list[str] = []
    text_img, glyphs = image, np.zeros(image.shape[:2], bool)
    if with_text:
        text_img, glyphs, kinds, texts = overlay_text(trng, image)
    overlay = (text_img != image).any(axis=-1)
    sample = WeldSample(text_img, glyphs, label, defects, kinds, texts, overlay_mask=overlay)
    return sample, zone


def render_weld(
    rng: np.random.Generator,
    *,
    label: str,
    size: int,
    with_text: bool,
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> WeldSample:
    """Render one labelled weld photo (``size`` x ``size``) and its exact text/overlay masks from ``rng``."""
    return _render(rng, label, size, with_text, defect_types)[0]


def _has_text(seed: int, index: int, fraction: float) -> bool:
    """Golden-ratio sequence: per-class text fraction within ~1/n of ``fraction``, identical for both
    classes (text can't predict the label) and a pure function of (seed, index) (order independent)."""
    offset = float(np.random.default_rng([seed, 2]).random())
    return (offset + index * _GOLDEN) % 1.0 < fraction


def _expected_files(spec: ProceduralSpec) -> list[tuple[str, int, str, str, str]]:
    """(label, index, image relpath, text-mask relpath, overlay-mask relpath) for every image of ``spec``."""
    width = max(4, len(str(spec.n_per_class)))
    rows = []
    for label in LABELS:
        folder, stem = _CLASS_DIRS[label]
        for i in range(1, spec.n_per_class + 1):
            name = f"{stem}_{i:0{width}d}"
            rows.append(
                (
                    label,
                    i,
                    f"{folder}/{name}.{spec.image_format}",
                    f"text_masks/{folder}/{name}.png",
                    f"overlay_masks/{folder}/{name}.png",
                )
            )
    return rows


def _save(path: Path, array: np.ndarray, fmt: str) -> None:
    """Write via a temp name + rename so an existing file is always complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "jpg":
        Image.fromarray(array).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _check_existing(out: Path, spec: ProceduralSpec, expected: list[tuple[str, int, str, str, str]]) -> bool:
    """True if ``out`` already holds this exact dataset; raise if it holds anything else."""
    spec_path = out / "spec.json"
    if spec_path.exists():
        try:
            stored = json.loads(spec_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecMismatchError(f"{spec_path} is unreadable ({exc}); use another out_dir") from exc
        wanted = {"version": VERSION, "spec": spec.to_json()}
        if stored != wanted:
            raise SpecMismatchError(
                f"{out} holds a dataset generated with {stored}, not {wanted}; "
                "use another out_dir or delete it"
            )
        (out / _INCOMPLETE_MARKER).unlink(missing_ok=True)
        files = ["samples.csv", *(p for row in expected for p in row[2:])]
        return all((out / f).is_file() for f in files)
    if out.exists() and any(out.iterdir()) and not (out / _INCOMPLETE_MARKER).exists():
        raise SpecMismatchError(
            f"{out} is not empty and was not written by generate_dataset; not overwriting it"
        )
    return False


def generate_dataset(out_dir: str | Path, spec: ProceduralSpec, *, progress: bool = False) -> Path:
    """Write the ingest layout (class folders, text_masks/, overlay_masks/, samples.csv, spec.json).

    Idempotent: a complete folder with the same spec is returned untouched; a different spec raises
    ``SpecMismatchError``. ``spec.json`` is written last, so an interrupted run is redone from scratch.
    """
    out = Path(out_dir)
    expected = _expected_files(spec)
    if _check_existing(out, spec, expected):
        return out
    # Redo from scratch: this folder is ours (empty, same spec, or an interrupted run).
    (out / "spec.json").unlink(missing_ok=True)
    for sub in ("good_welds", "bad_welds", *MASK_DIRS):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / _INCOMPLETE_MARKER, json.dumps(spec.to_json()))
    for folder, _ in _CLASS_DIRS.values():
        (out / folder).mkdir()
        (out / "text_masks" / folder).mkdir(parents=True)
        (out / "overlay_masks" / folder).mkdir(parents=True)

    rows: list[dict[str, str]] = []

    def work(item: tuple[str, int, str, str, str]) -> None:
        label, i, rel, mask_rel, overlay_rel = item
        rng = np.random.default_rng([spec.seed, LABELS.index(label), i])
        sample = render_weld(
            rng,
            label=label,
            size=spec.image_size,
            with_text=_has_text(spec.seed, i, spec.text_fraction),
            defect_types=spec.defect_types,
        )
        _save(out / rel, sample.image, spec.image_format)
        _save(out / mask_rel, sample.text_mask.astype(np.uint8) * 255, "png")
        _save(out / overlay_rel, sample.overlay_mask.astype(np.uint8) * 255, "png")
        rows.append(
            {
                "path": rel,
                "label": label,
                "defects": ";".join(sample.defects),
                "text_kinds": ";".join(sample.text_kinds),
                "texts": ";".join(sample.texts),
                "mask_path": mask_rel,
                "overlay_mask_path": overlay_rel,
            }
        )

    if progress:
        from rich.progress import track

        for item in track(expected, description=f"Rendering welds into {out}"):
            work(item)
    else:
        for item in expected:
            work(item)

    tmp = out / ".samples.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "samples.csv")
    _write_text(out / "spec.json", json.dumps({"version": VERSION, "spec": spec.to_json()}, indent=2) + "\n")
    (out / _INCOMPLETE_MARKER).unlink()
    return out
