"""What the DINO warm-up learns from: unlabelled image rows (DATA's photos, ``pretrain.extra_data`` folders,
``pretrain.synthetic_data``'s accepted images) and their multi-crop views, made in the Ray Data pipeline so that
every epoch draws new crops."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from weldray import io
from weldray.config import WeldrayConfig

log = logging.getLogger(__name__)

#: Columns of the view dataset: the 2 global views first (the teacher sees those), then the local ones.
VIEW_COLUMN = "view_{}"


def extra_images(folder: str, cfg: WeldrayConfig) -> list[str]:
    """Every image below ``folder`` (any depth, ``data.extensions``), except in folders whose name starts with
    ``_``: weldray's own side folders (``_text_removal/masks``, ``_synthetic/candidates``) are not photos."""
    try:
        files = io.list_files(folder, cfg.data.extensions, cfg.data.s3_endpoint_url)
    except FileNotFoundError:
        raise FileNotFoundError(f"pretrain.extra_data: {folder} does not exist") from None
    root = io.filesystem(folder, cfg.data.s3_endpoint_url)[1]
    inside = [f.removeprefix("s3://")[len(root):].strip("/").split("/") for f in files]
    keep = [f for f, parts in zip(files, inside, strict=True) if not any(p.startswith("_") for p in parts[:-1])]
    if not keep:
        raise FileNotFoundError(f"pretrain.extra_data: no images with extensions {cfg.data.extensions} under {folder}")
    return keep


def pretrain_rows(cfg: WeldrayConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The images to learn from, as manifest-like rows for :func:`weldray.data.read_manifest_dataset`, and
    where they come from.

    DATA's photos are the rows a training with the same overrides trains on (``training.cv_fold`` /
    ``training.holdout`` leave their held-out rows out here too, so a cross-validation of a warmed-up backbone
    can keep each fold unseen); their labels are not used. Synthetic images must descend from those rows
    (the lineage check of training's synthetic mix).
    """
    from weldray.data import load_manifest, resolve_dataset
    from weldray.synthetic.lineage import synthetic_rows
    from weldray.training.data import split_rows

    p = cfg.pretrain
    manifest_path = resolve_dataset(cfg)
    real = split_rows(load_manifest(manifest_path), cfg.training.cv_fold, cfg.training.holdout).train
    paths = {"data": real["path"].tolist()}
    paths["extra"] = [f for folder in p.extra_data for f in extra_images(folder, cfg)]
    if p.synthetic_data is not None:
        scoped = replace(cfg, training=replace(cfg.training, synthetic_data=p.synthetic_data))
        paths["synthetic"] = synthetic_rows(scoped, real)["path"].tolist()
    else:
        paths["synthetic"] = []
    rows = pd.DataFrame(
        {"path": [f for group in paths.values() for f in group],
         "source": [name for name, group in paths.items() for _ in group]}
    ).drop_duplicates("path", ignore_index=True)
    if rows.empty:
        raise ValueError(f"{manifest_path}: no images to pretrain on")
    # What read_manifest_dataset reads: every row a "train" row, no label (-1: unused).
    rows = rows.assign(label_index=-1, split="train", fold=-1)
    counts = rows["source"].value_counts()
    sources = {"manifest": str(manifest_path), "rows": split_description(cfg),
               **{f"n_{name}": int(counts.get(name, 0)) for name in paths}}
    log.info("pretraining on %d images: %d photos of DATA (%s), %d extra, %d synthetic", len(rows),
             sources["n_data"], sources["rows"], sources["n_extra"], sources["n_synthetic"])
    return rows, sources


def split_description(cfg: WeldrayConfig) -> str:
    t = cfg.training
    if t.cv_fold is not None:
        return f"every fold but {t.cv_fold}" + (", without its val rows" if t.holdout else "")
    return "the manifest's train split" if t.holdout else "every labelled photo"


class DinoViews:
    """Ray Data ``map_batches`` function: each image -> 2 global + ``n_local_crops`` local views (lightly's
    ``DINOTransform``: random resized crops, flips, colour jitter, grey, blur, solarisation), normalised with
    the classifier's own mean/std, as float32 CHW columns ``view_0`` .. ``view_{n+1}``.

    Welds have no up or down: vertical flips as likely as horizontal ones (as in training's augmentation).
    """

    def __init__(self, cfg: dict[str, Any], mean: list[float], std: list[float]) -> None:
        from lightly.transforms import DINOTransform

        self.transform = DINOTransform(
            global_crop_size=cfg["global_crop_size"],
            global_crop_scale=tuple(cfg["global_crop_scale"]),
            local_crop_size=cfg["local_crop_size"],
            local_crop_scale=tuple(cfg["local_crop_scale"]),
            n_local_views=cfg["n_local_crops"],
            vf_prob=0.5,
            normalize={"mean": mean, "std": std},
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        views = [self.transform(Image.fromarray(np.ascontiguousarray(img))) for img in batch["image"]]
        return {VIEW_COLUMN.format(i): np.stack([v[i].numpy() for v in views]) for i in range(len(views[0]))}


def decode_size(global_crop_size: int) -> int:
    """Images are decoded once at the global crop size plus headroom (as training decodes for its crops)."""
    return int(round(global_crop_size * 1.15 / 8) * 8)


def build_dataset(rows: pd.DataFrame, cfg: dict[str, Any], mean: list[float], std: list[float], *,
                  num_cpus: float) -> tuple[Any, int]:
    """The view dataset (decoded once and materialised; views made lazily, anew each epoch) and its image
    count (files that broke since they were listed are logged and dropped)."""
    from weldray.data import read_manifest_dataset

    base = read_manifest_dataset(rows, image_size=decode_size(cfg["global_crop_size"]), num_cpus=num_cpus)
    base = base.select_columns(["image"]).materialize()
    views = base.map_batches(DinoViews(cfg, mean, std), batch_size=16, batch_format="numpy", num_cpus=num_cpus)
    return views, base.count()
