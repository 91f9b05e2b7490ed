"""Row selection and the Ray Data train/val pipelines (decode once, augment every epoch, by seed)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
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


def sub_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed drawn from ``seed`` and ``parts`` (an epoch, a worker's rank, a photo's hash): independent
    streams for each combination."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


class Augment:
    """Random resized crop (scale 0.6-1, keeping the whole-image squash policy otherwise), flips,
    +-15 degree rotation and colour jitter. A Ray Data ``map_batches`` function: runs in the data
    pipeline, one execution per epoch (:func:`epoch_batches`).

    With ``seed`` each photo's augmentation is drawn from a generator seeded by ``seed`` and its path, so it is
    the same whichever task, batch or order the photo comes in (the batches need a ``path`` column)."""

    def __init__(self, size: int, augment: bool = True, seed: int | None = None) -> None:
        self.size = size
        self.augment = augment
        self.seed = seed

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
        seeded = self.augment and self.seed is not None
        out = []
        for i, img in enumerate(images):
            # torchvision draws from torch's global generator: seed a fork of it, leave the caller's as it was.
            with torch.random.fork_rng(devices=[], enabled=seeded):
                if seeded:
                    torch.manual_seed(sub_seed(self.seed, zlib.crc32(str(batch["path"][i]).encode())))
                out.append(tf(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)).numpy())
        return {"image": np.stack(out), "label": batch["label"].astype(np.int64)}


def build_datasets(splits: SplitRows, image_sizes: list[int], eval_size: int, *, num_cpus: float) -> tuple[Any, dict]:
    """The training rows decoded once (materialised) at the largest size plus crop headroom, which each epoch
    resizes and augments anew (:func:`epoch_batches`), and Ray Train's datasets: ``{"val": ...}`` when there are
    validation rows (a final fit holds nothing out)."""
    from weldray.data import read_manifest_dataset

    decode_size = int(round(max(image_sizes) * 1.15 / 8) * 8)
    train = read_manifest_dataset(splits.train, image_size=decode_size, num_cpus=num_cpus).materialize()
    if splits.val.empty:
        return train, {}
    val = read_manifest_dataset(splits.val, image_size=eval_size, num_cpus=num_cpus).materialize()
    return train, {
        "val": val.map_batches(Augment(eval_size, False), batch_size=32, batch_format="numpy", num_cpus=num_cpus)
    }


def epoch_batches(
    rows: Any, *, size: int, augment: bool, seed: int, batch_size: int, num_cpus: float, device: Any
) -> Iterator[dict[str, Any]]:
    """One epoch's batches of ``rows`` (this worker's decoded training rows): resized to ``size``, augmented and
    shuffled, all drawn from ``seed`` (give each epoch its own: :func:`sub_seed`). The same seed gives the same
    batches: the rows come in their stored order (``preserve_order``) into a seeded shuffle buffer that holds them
    all, and each photo's augmentation is seeded by its path (:class:`Augment`)."""
    ds = rows.map_batches(Augment(size, augment, seed), batch_size=32, batch_format="numpy", num_cpus=num_cpus)
    ds.context.execution_options.preserve_order = True
    return ds.iter_torch_batches(
        batch_size=batch_size,
        drop_last=True,
        local_shuffle_buffer_size=rows.count(),
        local_shuffle_seed=seed,
        device=device,
    )
