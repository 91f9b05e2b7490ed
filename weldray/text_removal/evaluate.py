"""Text-removal quality on procedural welds, where the exact text mask is known.

Each sample is rendered twice from the same seed, with and without text, so one run measures:

* ``text_recall``: share of text (glyph) pixels covered by the inpaint mask (goal >= 0.98);
* ``overlay_recall``: the same over every pixel the overlay changed, banners, marker loops and arrows
  included (informational: those are graphics, not text, and an OCR detector is not meant to find them);
* ``text_free_area``: share of a text-free image that gets inpainted (goal <= 0.01): any box here
  is a weld ripple, spatter or edge read as text;
* ``spurious_area``: on images with text, inpainted pixels farther than the (scaled) dilation + 3 px from
  any overlay pixel (the dilation halo is intended, and so is a title banner or marker stroke next to the
  text; the rest is bead or plate erased by a false box or an over-long bridge);
* ``bead_change``: mean absolute change (grey levels) of the text-free image after cleaning: 0 means
  the bead was not touched at all;
* ``bead_inpainted``: on images with text, the share of the weld bead (the metal, see :func:`bead_mask`)
  that was inpainted, and ``bead_inpainted_no_text``: the share of the bead farther than the halo from
  any overlay pixel that was inpainted (bead erased without text on it);
* ``bead_error``: mean absolute difference (grey levels) between the cleaned image and the same render
  without text, over the inpainted bead pixels (how well the fill restores the bead; the text image itself
  scores ``bead_error_before`` there).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from weldray.text_removal.cleaner import TextCleaner, scaled_dilation


@dataclass
class ProceduralMetrics:
    n_text: int
    n_text_free: int
    text_recall: float
    text_recall_min: float
    recall_by_kind: dict[str, float]
    overlay_recall: float
    text_free_area_mean: float
    text_free_area_max: float
    text_free_false_images: int
    spurious_area_mean: float
    spurious_area_max: float
    bead_change_mean: float
    bead_inpainted_mean: float
    bead_inpainted_max: float
    bead_inpainted_no_text_mean: float
    bead_inpainted_no_text_max: float
    bead_error: float
    bead_error_before: float
    detect_ms_median: float
    inpaint_ms_median: float

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def bead_mask(seed: int, index: int, label: str, size: int) -> np.ndarray:
    """The weld bead (the metal, ``|v| < 1`` half widths) of ``render_weld(default_rng([seed, index]))``.

    The generator returns only a wide weld zone (bead + heat tint, ``|v| < 6``), so the bead is rebuilt here
    from the generator's own helpers in the order it draws them (nominal geometry: the ragged edges of an
    incomplete-fusion defect are not followed). The rebuilt zone is checked against the generator's:
    a changed generator fails here instead of scoring the wrong pixels.
    """
    from weldray.data import procedural as gen

    rng = np.random.default_rng([seed, index])
    sample, zone = gen._render(np.random.default_rng([seed, index]), label, size, False, gen.DEFECT_TYPES)
    base = np.random.default_rng(int(rng.integers(0, 2**63 - 1, size=3)[0]))
    half = int(math.ceil(0.85 * size))
    n = 2 * half + 1
    hw0 = size * base.uniform(0.035, 0.09)
    seam = size * base.uniform(-0.1, 0.1)
    yc = seam + hw0 * base.uniform(0.03, 0.25) * gen._smooth1d(base, n, hw0 * 8)
    hw = hw0 * (1 + base.uniform(0.02, 0.06) * gen._smooth1d(base, n, hw0 * 3))
    cx, cy = gen._canonical_coords(gen._camera(base, size), size)
    xi = np.clip((cx + (half + 0.5)).astype(np.int32), 0, 2 * half)
    v = (cy - yc.astype(np.float32)[xi]) / hw.astype(np.float32)[xi]
    if "incomplete_fusion" not in sample.defects and ((np.abs(v) < 6.0) != zone).mean() > 1e-3:
        raise RuntimeError("weldray.data.procedural changed its bead geometry: update evaluate.bead_mask")
    return np.abs(v) < 1.0


def evaluate_procedural(cleaner: TextCleaner, n: int, *, size: int = 320, seed: int = 0) -> ProceduralMetrics:
    """Render ``n`` (text, text-free) pairs and score the cleaner on them."""
    import cv2

    from weldray.data.procedural import LABELS, render_weld

    covered = total = ov_covered = ov_total = 0
    per_image, kinds_cov, kinds_tot = [], defaultdict(int), defaultdict(int)
    free_areas, spurious, bead_change, det_ms, inp_ms = [], [], [], [], []
    bead_inp, bead_free_inp, bead_err, bead_err0, bead_px = [], [], [], [], 0
    halo = scaled_dilation(cleaner.cfg.dilation_px, (size, size)) + 3
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * halo + 1, 2 * halo + 1))
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        with_text = render_weld(np.random.default_rng([seed, i]), label=label, size=size, with_text=True)
        without = render_weld(np.random.default_rng([seed, i]), label=label, size=size, with_text=False)
        tm = with_text.text_mask.astype(bool)
        res = cleaner.clean(with_text.image)
        det_ms.append(res.timings_ms["detect"])
        if res.mask.any():
            inp_ms.append(res.timings_ms["inpaint"])
        m = res.mask > 0
        if tm.any():
            c, t = int((m & tm).sum()), int(tm.sum())
            covered, total = covered + c, total + t
            per_image.append(c / t)
            for k in with_text.text_kinds:
                kinds_cov[k], kinds_tot[k] = kinds_cov[k] + c, kinds_tot[k] + t
            om = with_text.overlay_mask
            ov_covered, ov_total = ov_covered + int((m & om).sum()), ov_total + int(om.sum())
            near = cv2.dilate(om.astype(np.uint8), kernel) > 0
            spurious.append(float((m & ~near).mean()))
            bead = bead_mask(seed, i, label, size)
            bead_inp.append(float((m & bead).sum() / max(bead.sum(), 1)))
            far = bead & ~near
            bead_free_inp.append(float((m & far).sum() / max(far.sum(), 1)))
            filled = m & bead
            if filled.any():
                truth = without.image[filled].astype(np.int16)
                bead_err.append(float(np.abs(res.image[filled].astype(np.int16) - truth).sum()))
                bead_err0.append(float(np.abs(with_text.image[filled].astype(np.int16) - truth).sum()))
                bead_px += int(filled.sum()) * 3
        free = cleaner.clean(without.image)
        free_areas.append(free.mask_fraction)
        bead_change.append(float(np.abs(free.image.astype(np.int16) - without.image.astype(np.int16)).mean()))
    return ProceduralMetrics(
        n_text=len(per_image),
        n_text_free=len(free_areas),
        text_recall=covered / total if total else float("nan"),
        text_recall_min=min(per_image) if per_image else float("nan"),
        recall_by_kind={k: kinds_cov[k] / kinds_tot[k] for k in sorted(kinds_tot)},
        overlay_recall=ov_covered / ov_total if ov_total else float("nan"),
        text_free_area_mean=float(np.mean(free_areas)),
        text_free_area_max=float(np.max(free_areas)),
        text_free_false_images=int(sum(a > 0 for a in free_areas)),
        spurious_area_mean=float(np.mean(spurious)) if spurious else 0.0,
        spurious_area_max=float(np.max(spurious)) if spurious else 0.0,
        bead_change_mean=float(np.mean(bead_change)),
        bead_inpainted_mean=float(np.mean(bead_inp)) if bead_inp else 0.0,
        bead_inpainted_max=float(np.max(bead_inp)) if bead_inp else 0.0,
        bead_inpainted_no_text_mean=float(np.mean(bead_free_inp)) if bead_free_inp else 0.0,
        bead_inpainted_no_text_max=float(np.max(bead_free_inp)) if bead_free_inp else 0.0,
        bead_error=sum(bead_err) / bead_px if bead_px else 0.0,
        bead_error_before=sum(bead_err0) / bead_px if bead_px else 0.0,
        detect_ms_median=float(np.median(det_ms)),
        inpaint_ms_median=float(np.median(inp_ms)) if inp_ms else 0.0,
    )
