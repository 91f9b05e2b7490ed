"""Synthetic photos for ingest tests: distinct smooth textures with random shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def distinct_image(seed: int, size: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = rng.random((8, 8, 3))
    img = Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img).copy()
    for _ in range(4):
        x, y = rng.integers(0, size - 20, 2)
        arr[y : y + 20, x : x + 20] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)


def write_dataset(root: Path, n_per_class: int = 12, *, seed: int = 0) -> Path:
    for c, folder in enumerate(("good_welds", "bad_welds")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            name = f"{folder.split('_')[0]}_{i:03d}.jpg"
            distinct_image(seed * 1000 + c * 100 + i).save(root / folder / name, quality=92)
    return root
