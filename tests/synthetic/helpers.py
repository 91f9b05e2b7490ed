"""Small labelled weld datasets for the synthetic tests: a textured bead band with YOLO boxes, dark defect spots
(with Defect boxes) on the bad photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.helpers import distinct_image

NAMES = ["Bad Weld", "Good Weld", "Defect"]
# The bead band, relative to the image: y from 0.35 to 0.65, x from 0.1 to 0.9.
BEAD = (0.5, 0.5, 0.8, 0.3)


def weld_photo(seed: int, size: int = 128, *, bad: bool) -> tuple[Image.Image, list[str]]:
    """A photo and its YOLO label lines."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(distinct_image(seed, size)).astype(np.float32)
    x0, x1 = int((BEAD[0] - BEAD[2] / 2) * size), int((BEAD[0] + BEAD[2] / 2) * size)
    y0, y1 = int((BEAD[1] - BEAD[3] / 2) * size), int((BEAD[1] + BEAD[3] / 2) * size)
    xs = np.arange(x0, x1)
    ripples = 150 + 60 * np.sin(xs / 3.0 + rng.uniform(0, 6))[None, :, None]
    arr[y0:y1, x0:x1] = ripples + rng.normal(0, 8, (y1 - y0, x1 - x0, 3))
    lines = [f"{0 if bad else 1} {BEAD[0]} {BEAD[1]} {BEAD[2]} {BEAD[3]}"]
    if bad:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.42, 0.58), 0.06
            yy, xx = np.mgrid[0:size, 0:size] / size
            arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = 20
            lines.append(f"2 {cx:.4f} {cy:.4f} {2 * r + 0.02:.4f} {2 * r + 0.02:.4f}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), lines


def write_labelled_dataset(root: Path, n_per_class: int = 8, size: int = 128, *, labels: bool = True) -> Path:
    """``good_welds/``, ``bad_welds/`` and (with ``labels``) ``labels/<class folder>/<stem>.txt`` + data.yaml."""
    for c, folder in enumerate(("good_welds", "bad_welds")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        if labels:
            (root / "labels" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            stem = f"{folder.split('_')[0]}_{i:03d}"
            img, lines = weld_photo(1000 * c + i, size, bad=folder == "bad_welds")
            img.save(root / folder / f"{stem}.png")
            if labels:
                (root / "labels" / folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    if labels:
        (root / "labels" / "data.yaml").write_text(f"nc: 3\nnames: {json.dumps(NAMES)}\n")
    return root
