"""``copy_paste``: the CPU generator. Real Defect patches (from the YOLO boxes of bad train photos) are pasted
into the weld bead of real good train photos with Poisson blending (OpenCV ``seamlessClone``) and scale, rotation,
colour and contrast jitter, making ``bad_weld`` images. The same number of ``good_weld`` images get patches of the
same sizes cut from other good photos' beads, pasted the same way: both classes carry blending seams, so a seam
is no shortcut to the label.

The boxes are the dataset authors' weak hints (weldray.data.labels); a dataset without them has no defect
locations to copy, and :meth:`CopyPasteGenerator.plan` says so instead of guessing.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig
from weldray.data.labels import Box, boxes_from_json
from weldray.preprocessing import ImageError
from weldray.synthetic.base import Generated, Generator, GeneratorUnavailable, Task, register, round_robin

log = logging.getLogger(__name__)

# Smallest pasted patch side (pixels); tinier boxes are label noise.
MIN_PATCH_PX = 6
# Patch draws per pasted patch before giving up on it (a long box rotated may not fit a thin bead).
PATCH_TRIES = 5


def _boxes(rows: pd.DataFrame, classes: list[str]) -> dict[str, list[Box]]:
    """relpath -> its boxes of ``classes`` (photos without such boxes left out)."""
    out = {}
    for relpath, value in zip(rows["relpath"], rows["boxes"], strict=True):
        boxes = [b for b in (boxes_from_json(value) or []) if b.cls in classes]
        if boxes:
            out[relpath] = boxes
    return out


def _labels(cfg: WeldrayConfig) -> tuple[str, str]:
    """(bad label, good label): the label data.yolo_label_rule gives a defect box, and the default label."""
    for label, classes in cfg.data.yolo_label_rule.items():
        if set(classes) & set(cfg.synthetic.defect_box_classes):
            return label, cfg.data.yolo_default_label
    raise GeneratorUnavailable(
        f"synthetic.defect_box_classes={cfg.synthetic.defect_box_classes} are in no data.yolo_label_rule entry "
        f"({dict(cfg.data.yolo_label_rule)}): the label of a pasted defect is unknown"
    )


@register("copy_paste")
class CopyPasteGenerator(Generator):
    def __init__(self, cfg: WeldrayConfig, sources: pd.DataFrame) -> None:
        super().__init__(cfg, sources)
        syn = cfg.synthetic
        self.bad_label, self.good_label = _labels(cfg)
        good = sources[sources["label"] == self.good_label]
        self.welds = _boxes(good, syn.weld_box_classes)
        self.defects = _boxes(sources[sources["label"] == self.bad_label], syn.defect_box_classes)
        # Every (photo, defect box): the patch pool of bad images and the size pool of good-bead patches.
        self.defect_pool = [(r, b) for r, boxes in sorted(self.defects.items()) for b in boxes]
        # Patch sources that failed to load (broken since ingest): skipped from then on, listed in the params.
        self.broken: set[str] = set()

    @classmethod
    def plan(cls, cfg: WeldrayConfig, sources: pd.DataFrame) -> list[Task]:
        syn = cfg.synthetic
        bad, good = _labels(cfg)
        n_labelled = int(sources["boxes"].notna().sum()) if "boxes" in sources else 0
        if n_labelled == 0:
            raise GeneratorUnavailable(
                f"copy_paste needs YOLO box labels and none of the {len(sources)} source photos has any: put them "
                f"in {cfg.data.labels_dir}/<class folder>/<stem>.txt beside the class folders (or use a YOLO "
                "export, data.yaml + images/ + labels/) and ingest again"
            )
        backgrounds = sorted(_boxes(sources[sources["label"] == good], syn.weld_box_classes))
        defects = _boxes(sources[sources["label"] == bad], syn.defect_box_classes)
        if not backgrounds:
            raise GeneratorUnavailable(
                f"copy_paste: none of the {(sources['label'] == good).sum()} {good} source photos has a "
                f"{syn.weld_box_classes} box (synthetic.weld_box_classes): no weld region to paste into"
            )
        if not defects:
            raise GeneratorUnavailable(
                f"copy_paste: none of the {(sources['label'] == bad).sum()} {bad} source photos has a "
                f"{syn.defect_box_classes} box (synthetic.defect_box_classes): no defect to copy"
            )
        labels = cfg.data.labels
        return [
            *round_robin(bad, labels.index(bad), backgrounds, syn.n_per_class, syn.seed),
            *round_robin(good, labels.index(good), backgrounds, syn.n_per_class, syn.seed),
        ]

    def generate(self, tasks: list[Task]) -> list[Generated | Exception]:
        out: list[Generated | Exception] = []
        for task in tasks:
            try:
                out.append(self._one(task))
            except (OSError, ValueError, cv2.error) as exc:
                out.append(exc)
        return out

    def _one(self, task: Task) -> Generated:
        syn = self.cfg.synthetic
        rng = np.random.default_rng(task.seed)
        image = self.load(task.source).copy()
        height, width = image.shape[:2]
        weld_box = self.welds[task.source][rng.integers(len(self.welds[task.source]))]
        weld = weld_box.pixels(width, height)
        sources, patches = [task.source], []
        for _ in range(int(rng.integers(1, syn.max_patches + 1))):
            for _ in range(PATCH_TRIES):
                try:
                    src, crop, size_box = self._patch(task, rng)
                except ImageError as exc:
                    log.warning("patch source skipped: %s", exc)
                    continue
                placed = self._paste(image, crop, size_box, weld, rng)
                if placed is not None:
                    break
            else:
                continue
            image = placed.pop("image")
            patches.append({"source": src, **placed})
            if src not in sources:
                sources.append(src)
        if not patches:
            raise ValueError(f"weld box {weld} of {task.source} is too small for any patch")
        params: dict[str, Any] = {"weld_box": list(weld), "patches": patches}
        if self.broken:
            params["unreadable_patch_sources"] = sorted(self.broken)
        return Generated(image, sources, params)

    def _patch(self, task: Task, rng: np.random.Generator) -> tuple[str, np.ndarray, Box]:
        """(source id, patch pixels, the box giving its size relative to the image)."""
        if task.label == self.bad_label:
            pool = [p for p in self.defect_pool if p[0] not in self.broken]
            if not pool:
                raise ImageError("every defect patch source is unreadable")
            src, defect = pool[rng.integers(len(pool))]
            img = self._load_patch_source(src)
            x0, y0, x1, y1 = defect.pixels(img.shape[1], img.shape[0])
            return src, img[y0:y1, x0:x1], defect
        # A good-bead patch of a defect patch's size, from another good photo's bead (seams on both classes).
        defect = self.defect_pool[rng.integers(len(self.defect_pool))][1]
        others = [r for r in sorted(self.welds) if r != task.source and r not in self.broken] or [task.source]
        src = others[rng.integers(len(others))]
        bead = self.welds[src][rng.integers(len(self.welds[src]))]
        w, h = min(defect.w, bead.w), min(defect.h, bead.h)
        x = bead.x + rng.uniform(-(bead.w - w) / 2, (bead.w - w) / 2)
        y = bead.y + rng.uniform(-(bead.h - h) / 2, (bead.h - h) / 2)
        box = Box(bead.cls, x, y, w, h)
        img = self._load_patch_source(src)
        x0, y0, x1, y1 = box.pixels(img.shape[1], img.shape[0])
        return src, img[y0:y1, x0:x1], box

    def _load_patch_source(self, relpath: str) -> np.ndarray:
        if relpath in self.broken:
            raise ImageError(f"{relpath} could not be read before")
        try:
            return self.load(relpath)
        except (ImageError, OSError) as exc:
            self.broken.add(relpath)
            raise ImageError(f"patch source {relpath}: {exc}") from exc

    def _paste(
        self, image: np.ndarray, crop: np.ndarray, size_box: Box, weld: tuple[int, int, int, int],
        rng: np.random.Generator,
    ) -> dict[str, Any] | None:
        """Blend ``crop`` (jittered) into ``image`` with its whole extent inside ``weld``; None if it cannot fit."""
        syn = self.cfg.synthetic
        height, width = image.shape[:2]
        wx0, wy0, wx1, wy1 = weld
        scale = float(rng.uniform(*syn.scale_range))
        angle = float(rng.uniform(-syn.max_rotation_deg, syn.max_rotation_deg))
        gains = 1.0 + rng.uniform(-syn.color_jitter, syn.color_jitter, 3)
        contrast = 1.0 + float(rng.uniform(-syn.contrast_jitter, syn.contrast_jitter))
        pw, ph = size_box.w * width * scale, size_box.h * height * scale
        # Shrink until the rotated patch (plus the 2 px blending border) fits inside the weld box.
        cos, sin = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
        rot_w, rot_h = pw * cos + ph * sin, pw * sin + ph * cos
        fit = min(1.0, (wx1 - wx0 - 4) / max(rot_w, 1e-6), (wy1 - wy0 - 4) / max(rot_h, 1e-6))
        pw, ph = int(round(pw * fit)), int(round(ph * fit))
        if min(pw, ph) < MIN_PATCH_PX or crop.size == 0:
            return None
        patch = cv2.resize(crop, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32)
        mean = patch.mean(axis=(0, 1))
        patch = np.clip(((patch - mean) * contrast + mean) * gains, 0, 255).astype(np.uint8)
        # Rotate patch and mask onto a canvas with a zero border: seamlessClone needs the mask off the edges.
        cw, ch = int(np.ceil(pw * cos + ph * sin)) + 4, int(np.ceil(pw * sin + ph * cos)) + 4
        matrix = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
        matrix[:, 2] += ((cw - pw) / 2, (ch - ph) / 2)
        canvas = cv2.warpAffine(patch, matrix, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = cv2.warpAffine(np.full((ph, pw), 255, np.uint8), matrix, (cw, ch), flags=cv2.INTER_NEAREST)
        mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        mask_w, mask_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        # seamlessClone centres the mask's bounding box on ``center``: keep that box inside the weld box.
        lo_x, hi_x = wx0 + mask_w // 2 + 1, wx1 - (mask_w - mask_w // 2) - 1
        lo_y, hi_y = wy0 + mask_h // 2 + 1, wy1 - (mask_h - mask_h // 2) - 1
        if hi_x < lo_x or hi_y < lo_y:
            return None
        cx, cy = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
        blended = cv2.seamlessClone(canvas, image, mask, (cx, cy), cv2.NORMAL_CLONE)
        x0, y0 = cx - mask_w // 2, cy - mask_h // 2
        return {
            "image": blended,
            "box": [int(x0), int(y0), int(x0 + mask_w), int(y0 + mask_h)],
            "scale": round(float(scale * fit), 4),
            "rotation_deg": round(angle, 2),
            "color_gains": [round(float(g), 4) for g in gains],
            "contrast": round(contrast, 4),
        }
