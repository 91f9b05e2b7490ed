"""Row selection and the Ray Data train/val pipelines (decode once, augment every epoch, by seed)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from weldray.data.labels import Box, boxes_from_json
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


def check_box_labels(train: pd.DataFrame, box_crop_prob: float) -> None:
    """Box crops (``training.box_crop_prob``) need training rows with YOLO boxes: say so before anything trains."""
    from weldray.config import ConfigError

    if box_crop_prob > 0 and train["boxes"].isna().all():
        raise ConfigError(
            "training.box_crop_prob",
            f"box crops need YOLO boxes, and none of the {len(train)} training photos has any: put a label "
            "file per photo in labels/<class folder>/<stem>.txt beside the class folders (data.labels_dir; "
            "docs/data.md), or set training.box_crop_prob=0",
        )


def sub_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed drawn from ``seed`` and ``parts`` (an epoch, a worker's rank, a photo's hash): independent
    streams for each combination."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


class Augment:
    """Random resized crop (``crop_scale`` of the area, keeping the whole-image squash policy otherwise), flips,
    +-15 degree rotation and colour jitter. With ``box_crop_prob``, that share of the views is a square crop
    around one of the photo's YOLO boxes instead (:func:`box_crop`; the batches need a ``boxes`` column). A Ray
    Data ``map_batches`` function: runs in the data pipeline, one execution per epoch (:func:`epoch_batches`).

    With ``seed`` each photo's augmentation is drawn from a generator seeded by ``seed`` and its path, so it is
    the same whichever task, batch or order the photo comes in (the batches need a ``path`` column)."""

    def __init__(
        self,
        size: int,
        augment: bool = True,
        seed: int | None = None,
        *,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        box_crop_prob: float = 0.0,
    ) -> None:
        self.size = size
        self.augment = augment
        self.seed = seed
        self.crop_scale = tuple(crop_scale)
        self.box_crop_prob = box_crop_prob if augment else 0.0

    @classmethod
    def for_training(cls, training: dict[str, Any], size: int, seed: int | None = None) -> Augment:
        """The training views of a ``training.*`` recipe (``asdict(TrainingConfig)``) at ``size``."""
        return cls(
            size,
            training["augment"],
            seed,
            crop_scale=tuple(training["crop_scale"]),
            box_crop_prob=training["box_crop_prob"],
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch
        from torchvision.transforms import v2

        images = batch["image"]
        if self.box_crop_prob and "boxes" not in batch:
            raise ValueError("box crops need the photos' YOLO boxes: the batches have no 'boxes' column")
        if self.augment:
            crop = v2.RandomResizedCrop(self.size, scale=self.crop_scale, ratio=(0.8, 1.25), antialias=True)
            rest = v2.Compose(
                [
                    v2.RandomHorizontalFlip(),
                    v2.RandomVerticalFlip(),
                    v2.RandomRotation(15),
                    v2.ColorJitter(0.25, 0.25, 0.2, 0.02),
                ]
            )
        else:
            crop, rest = v2.Resize([self.size, self.size], antialias=True), v2.Identity()
        seeded = self.augment and self.seed is not None
        out = []
        for i, img in enumerate(images):
            # torchvision draws from torch's global generator: seed a fork of it, leave the caller's as it was.
            with torch.random.fork_rng(devices=[], enabled=seeded):
                if seeded:
                    torch.manual_seed(sub_seed(self.seed, zlib.crc32(str(batch["path"][i]).encode())))
                x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
                boxes = boxes_from_json(batch["boxes"][i]) if self.box_crop_prob else None
                if boxes and float(torch.rand(())) < self.box_crop_prob:
                    x = box_crop(x, boxes, self.size)
                else:
                    x = crop(x)
                out.append(rest(x).numpy())
        return {"image": np.stack(out), "label": batch["label"].astype(np.int64)}


def box_crop(
    image: Any, boxes: list[Box], size: int, grow: tuple[float, float] = (1.3, 2.0), min_side: float = 0.3
) -> Any:
    """A square crop of ``image`` (CxHxW tensor) around one of ``boxes`` (relative YOLO boxes, drawn at random),
    resized to ``size``: side ``grow`` times the box's longer side (at least ``min_side`` of the photo, at most
    all of it), its centre jittered by up to a tenth of the side and kept inside the photo. Square, so the view
    keeps the aspect that the whole-photo squash gives at inference."""
    import torch
    from torchvision.transforms.v2 import functional as F

    h, w = image.shape[-2:]
    b = boxes[int(torch.randint(len(boxes), ()))]
    lo, hi = grow
    side = min(1.0, max(min_side, max(b.w, b.h) * (lo + (hi - lo) * float(torch.rand(())))))
    jitter = (torch.rand(2) - 0.5) * 0.2 * side
    cx = min(max(b.x + float(jitter[0]), side / 2), 1 - side / 2)
    cy = min(max(b.y + float(jitter[1]), side / 2), 1 - side / 2)
    top, left = round((cy - side / 2) * h), round((cx - side / 2) * w)
    return F.resized_crop(image, top, left, round(side * h), round(side * w), [size, size], antialias=True)


def build_datasets(
    splits: SplitRows, image_sizes: list[int], eval_size: int, *, num_cpus: float, boxes: bool = False
) -> tuple[Any, dict]:
    """The training rows decoded once (materialised) at the largest size plus crop headroom, which each epoch
    resizes and augments anew (:func:`epoch_batches`), with their YOLO boxes when ``boxes`` (box crops), and Ray
    Train's datasets: ``{"val": ...}`` when there are validation rows (a final fit holds nothing out)."""
    from weldray.data import read_manifest_dataset

    decode_size = int(round(max(image_sizes) * 1.15 / 8) * 8)
    train = read_manifest_dataset(splits.train, image_size=decode_size, num_cpus=num_cpus, boxes=boxes).materialize()
    if splits.val.empty:
        return train, {}
    val = read_manifest_dataset(splits.val, image_size=eval_size, num_cpus=num_cpus).materialize()
    return train, {
        "val": val.map_batches(Augment(eval_size, False), batch_size=32, batch_format="numpy", num_cpus=num_cpus)
    }


def epoch_batches(
    rows: Any, *, augment: Augment, batch_size: int, num_cpus: float, device: Any
) -> Iterator[dict[str, Any]]:
    """One epoch's batches of ``rows`` (this worker's decoded training rows) through ``augment`` (resized to its
    size, augmented and shuffled, all drawn from its seed: give each epoch its own, :func:`sub_seed`). The same
    seed gives the same batches: the rows come in their stored order (``preserve_order``) into a seeded shuffle
    buffer that holds them all, and each photo's augmentation is seeded by its path (:class:`Augment`)."""
    ds = rows.map_batches(augment, batch_size=32, batch_format="numpy", num_cpus=num_cpus)
    ds.context.execution_options.preserve_order = True
    return ds.iter_torch_batches(
        batch_size=batch_size,
        drop_last=True,
        local_shuffle_buffer_size=rows.count(),
        local_shuffle_seed=augment.seed,
        device=device,
    )
