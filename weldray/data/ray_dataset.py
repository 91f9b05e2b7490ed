"""Ray Data over a manifest: the one reader every distributed stage uses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weldray.data.labels import boxes_column
from weldray.preprocessing import ImageError, load_image, resize_for_model

log = logging.getLogger(__name__)


def _decode_batch(batch: pd.DataFrame, image_size: int | None) -> pd.DataFrame:
    """Decode a batch of manifest rows (keeping their ``boxes`` when read); rows whose file broke since ingest
    are logged and dropped."""
    images, keep = [], []
    for i, path in enumerate(batch["path"]):
        try:
            img = load_image(path)
        except (ImageError, OSError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        images.append(resize_for_model(img, image_size) if image_size else np.asarray(img))
        keep.append(i)
    columns = ["path", "label_index", *(["boxes"] if "boxes" in batch.columns else [])]
    out = batch.iloc[keep][columns].rename(columns={"label_index": "label"}).reset_index(drop=True)
    out["label"] = out["label"].astype(np.int64)
    out["image"] = images
    return out


def select_rows(
    manifest: pd.DataFrame,
    *,
    splits: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    exclude_folds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Manifest rows for the given splits / folds; excluded rows (label conflicts) never appear."""
    rows = manifest[manifest["split"] != "excluded"]
    if splits is not None:
        rows = rows[rows["split"].isin(list(splits))]
    if folds is not None:
        rows = rows[rows["fold"].isin(list(folds))]
    if exclude_folds is not None:
        rows = rows[~rows["fold"].isin(list(exclude_folds))]
    return rows.reset_index(drop=True)


def read_manifest_dataset(
    manifest: pd.DataFrame | str | Path,
    *,
    splits: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    exclude_folds: Sequence[int] | None = None,
    image_size: int | None = None,
    num_cpus: float = 0.5,
    boxes: bool = False,
) -> Any:
    """A ``ray.data.Dataset`` of ``{"image": uint8 HxWx3, "label": int64, "path": str}``, plus the manifest's
    ``boxes`` (YOLO boxes as JSON, or None) when ``boxes``.

    Decoding runs as Ray tasks with fractional CPUs so that, on small machines, actor pools
    downstream never starve the readers (a known Ray Data deadlock on 2 cores).
    """
    import ray

    from weldray.data.manifest import load_manifest

    df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
    rows = select_rows(df, splits=splits, folds=folds, exclude_folds=exclude_folds)
    if rows.empty:
        raise ValueError(f"no manifest rows for splits={splits} folds={folds} exclude_folds={exclude_folds}")
    if boxes:
        rows = rows.assign(boxes=boxes_column(rows))
    ds = ray.data.from_pandas(rows[["path", "label_index", *(["boxes"] if boxes else [])]])
    return ds.map_batches(
        _decode_batch,
        batch_format="pandas",
        batch_size=16,
        fn_kwargs={"image_size": image_size},
        num_cpus=num_cpus,
    )
