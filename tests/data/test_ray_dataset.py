"""The Ray Data reader over a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.helpers import write_dataset
from weldray.config import load_config
from weldray.data import ingest, load_manifest, read_manifest_dataset

pytestmark = pytest.mark.ray


def test_reader_yields_resized_images_labels_and_paths(tmp_path: Path, ray_local: None) -> None:
    root = write_dataset(tmp_path / "ds", 10)
    cfg = load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=2"])
    manifest = ingest(str(root), cfg).manifest_path
    df = load_manifest(manifest)
    # A file that breaks after ingest is skipped, not fatal.
    broken = df[df["split"] == "train"]["path"].iloc[0]
    Path(broken).write_bytes(b"garbage")

    rows = read_manifest_dataset(manifest, splits=["train"], image_size=64).take_all()
    expected = df[df["split"] == "train"]
    assert len(rows) == len(expected) - 1
    assert all(r["image"].shape == (64, 64, 3) and r["image"].dtype == np.uint8 for r in rows)
    by_path = dict(zip(expected["path"], expected["label_index"], strict=True))
    assert all(by_path[r["path"]] == r["label"] for r in rows)
    assert broken not in {r["path"] for r in rows}


def test_reader_selects_cross_validation_folds(tmp_path: Path, ray_local: None) -> None:
    root = write_dataset(tmp_path / "ds", 10)
    cfg = load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=2"])
    manifest = ingest(str(root), cfg).manifest_path
    df = load_manifest(manifest)
    held = {r["path"] for r in read_manifest_dataset(manifest, folds=[1], image_size=32).take_all()}
    rest = {r["path"] for r in read_manifest_dataset(manifest, exclude_folds=[1], image_size=32).take_all()}
    assert held == set(df[df["fold"] == 1]["path"]) and not held & rest
    assert held | rest == set(df["path"])
