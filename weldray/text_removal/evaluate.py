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
  the bead was not touched at all.
"""

from __future__ import annotations

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
    detect_ms_median: float
    inpaint_ms_median: float

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def evaluate_procedural(cleaner: TextCleaner, n: int, *, size: int = 320, seed: int = 0) -> ProceduralMetrics:
    """Render ``n`` (text, text-free) pairs and score the cleaner on them."""
    import cv2

    from weldray.data.procedural import LABELS, render_weld

    covered = total = ov_covered = ov_total = 0
    per_image, kinds_cov, kinds_tot = [], defaultdict(int), defaultdict(int)
    free_areas, spurious, bead_change, det_ms, inp_ms = [], [], [], [], []
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
        detect_ms_median=float(np.median(det_ms)),
        inpaint_ms_median=float(np.median(inp_ms)) if inp_ms else 0.0,
    )
