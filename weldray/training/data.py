"""Row selection and the Ray Data train/val pipelines (decode once, augment every epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from weldray.data.ray_dataset import select_rows


@dataclass
class SplitRows:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    description: str


def split_rows(manifest: pd.DataFrame, cv_fold: int | None, holdout: bool = False) -> SplitRows:
    """Train/val/test rows.

    Without ``holdout`` (the default) every labelled row trains: the deployable final fit, or with
    ``cv_fold=k`` every row outside fold k, which is the test set. With ``holdout`` the manifest's val
    rows (of the other folds, with ``cv_fold``) are held out for validation (early stopping, temperature)
    and, without ``cv_fold``, its test rows for a test figure. The held-out fold never influences training.
    """
    rows = select_rows(manifest)
    empty = rows.iloc[0:0].reset_index(drop=True)
    if cv_fold is None:
        if not holdout:
            return SplitRows(rows.reset_index(drop=True), empty, empty, f"final fit on all {len(rows)} labelled rows")
        parts = {s: rows[rows["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
        return SplitRows(parts["train"], parts["val"], parts["test"], "manifest splits train/val/test")
    n_folds = int(rows["fold"].max()) + 1
    if cv_fold >= n_folds:
        raise ValueError(
            f"training.cv_fold={cv_fold} but the manifest has {n_folds} folds (0..{n_folds - 1})"
        )
    held = rows["fold"] == cv_fold
    val = (~held & (rows["split"] == "val")) if holdout else pd.Series(False, index=rows.index)
    return SplitRows(
        rows[~held & ~val].reset_index(drop=True),
        rows[val].reset_index(drop=True),
        rows[held].reset_index(drop=True),
        f"cross-validation fold {cv_fold}/{n_folds} (test = fold {cv_fold})",
    )


def class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """Inverse-frequency weights normalised to mean 1 (a class absent from train gets weight 1)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 1.0)
    return (w / w.mean()).tolist()


class Augment:
    """Random resized crop (scale 0.6-1, keeping the whole-image squash policy otherwise), flips,
    +-15 degree rotation and colour jitter. A Ray Data ``map_batches`` function: runs in the data
    pipeline, so each epoch's re-execution draws new augmentations."""

    def __init__(self, size: int, augment: bool = True) -> None:
        self.size = size
        self.augment = augment

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch
        from torchvision.transforms import v2

        images = batch["image"]
        if self.augment:
            tf = v2.Compose(
                [
                    v2.RandomResizedCrop(self.size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
                    v2.RandomHorizontalFlip(),
                    v2.RandomVerticalFlip(),
                    v2.RandomRotation(15),
                    v2.ColorJitter(0.25, 0.25, 0.2, 0.02),
                ]
            )
        else:
            tf = v2.Resize([self.size, self.size], antialias=True)
        out = np.stack(
            [tf(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)).numpy() for img in images]
        )
        return {"image": out, "label": batch["label"].astype(np.int64)}


def build_datasets(
    splits: SplitRows, image_sizes: list[int], eval_size: int, *, augment: bool, num_cpus: float
) -> dict[str, Any]:
    """``{"train_<size>": ..., "val": ...}`` (no "val" without validation rows): decoded once (materialised)
    at the largest size plus crop headroom, then resized/augmented lazily per epoch in ``map_batches``."""
    from weldray.data import read_manifest_dataset

    decode_size = int(round(max(image_sizes) * 1.15 / 8) * 8)
    base = read_manifest_dataset(splits.train, image_size=decode_size, num_cpus=num_cpus).materialize()
    datasets: dict[str, Any] = {
        f"train_{s}": base.map_batches(
            Augment(s, augment), batch_size=32, batch_format="numpy", num_cpus=num_cpus
        )
        for s in sorted(set(image_sizes))
    }
    if not splits.val.empty:  # a final fit holds nothing out
        val = read_manifest_dataset(splits.val, image_size=eval_size, num_cpus=num_cpus).materialize()
        datasets["val"] = val.map_batches(
            Augment(eval_size, False), batch_size=32, batch_format="numpy", num_cpus=num_cpus
        )
    return datasets
