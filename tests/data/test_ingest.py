"""Ingest on local folders: manifest contents, rejects, label conflicts, near-duplicates, splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.data.helpers import distinct_image, write_dataset
from weldray.config import load_config
from weldray.data import MANIFEST_COLUMNS, ingest, load_manifest, resolve_dataset


@pytest.fixture()
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=3"])


def test_manifest_has_every_image_with_its_facts(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 12)
    result = ingest(str(root), cfg)
    df = load_manifest(result.manifest_path)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert len(df) == 24 and result.per_label == {"good_weld": 12, "bad_weld": 12}
    row = df[df["relpath"] == "good_welds/good_000.jpg"].iloc[0]
    assert (row["label"], row["label_index"], row["width"], row["height"], row["format"]) == (
        "good_weld", 0, 128, 128, "JPEG")
    assert Path(row["path"]).is_file() and len(row["sha256"]) == 64
    assert set(df["split"]) == {"train", "val", "test"}
    assert set(df["fold"]) == {0, 1, 2}
    for name in ("manifest.parquet", "rejects.parquet", "summary.json", "split_report.md"):
        assert (result.manifest_dir / name).is_file()


def test_bad_files_are_rejected_with_reasons_and_nothing_else_is_lost(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 10)
    good = root / "good_welds"
    (good / "zero.jpg").write_bytes(b"")
    (good / "notes.txt").write_text("operator notes")
    (good / "fake.jpg").write_text("this is not a jpeg")
    data = (good / "good_000.jpg").read_bytes()
    (good / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (10, 10)).save(good / "tiny.png")
    result = ingest(str(root), cfg)
    reasons = {Path(r.path).name: r.reason for r in result.rejects}
    assert set(reasons) == {"zero.jpg", "notes.txt", "fake.jpg", "truncated.jpg", "tiny.png"}
    assert "zero-byte" in reasons["zero.jpg"]
    assert "not an image file" in reasons["notes.txt"]
    assert "unsupported image format" in reasons["fake.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "too small" in reasons["tiny.png"]
    assert result.n_images == 20
    rejects = pd.read_parquet(result.manifest_dir / "rejects.parquet")
    assert len(rejects) == 5 and rejects["reason"].str.len().min() > 5
    assert "truncated.jpg" in (result.manifest_dir / "split_report.md").read_text()


def test_same_file_under_two_labels_is_a_conflict_kept_out_of_splits(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 10)
    shutil.copy(root / "good_welds" / "good_003.jpg", root / "bad_welds" / "copied.jpg")
    result = ingest(str(root), cfg)
    assert len(result.label_conflicts) == 1
    assert result.label_conflicts[0]["files"] == ["bad_welds/copied.jpg", "good_welds/good_003.jpg"]
    df = load_manifest(result.manifest_path)
    conflicted = df[df["label_conflict"]]
    assert set(conflicted["split"]) == {"excluded"} and set(conflicted["fold"]) == {-1}
    summary = json.loads((result.manifest_dir / "summary.json").read_text())
    assert len(summary["label_conflicts"]) == 1


def test_planted_near_duplicates_never_straddle_splits_or_folds(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 14)
    planted = {}
    for src in ["good_001", "good_005", "bad_002", "bad_009"]:
        folder = "good_welds" if src.startswith("good") else "bad_welds"
        img = Image.open(root / folder / f"{src}.jpg")
        copies = {
            f"{src}_resized.png": img.resize((96, 96)),
            f"{src}_reencoded.jpg": img,
            f"{src}_flipped.jpg": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        }
        for name, copy in copies.items():
            copy.save(root / folder / name, quality=55)
        planted[src] = {f"{folder}/{src}.jpg", *(f"{folder}/{n}" for n in copies)}
    result = ingest(str(root), cfg)
    df = load_manifest(result.manifest_path)
    for members in planted.values():
        rows = df[df["relpath"].isin(members)]
        assert len(rows) == 4
        assert rows["group"].nunique() == 1, rows[["relpath", "group"]]
        assert rows["split"].nunique() == 1 and rows["fold"].nunique() == 1
    assert sorted(map(set, result.near_duplicate_groups), key=sorted) == sorted(planted.values(), key=sorted)
    # Independent images stay independent.
    assert df["group"].nunique() == len(df) - 4 * 3


def test_splits_are_stratified_and_deterministic(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 30)
    a = load_manifest(ingest(str(root), cfg).manifest_path)
    b = load_manifest(ingest(str(root), cfg).manifest_path)
    pd.testing.assert_frame_equal(a, b)
    for split in ("val", "test"):
        part = a[a["split"] == split]
        assert 0.08 < len(part) / len(a) < 0.25
        assert part["label"].nunique() == 2
    counts = a.groupby("fold")["label"].value_counts().unstack()
    assert counts.min().min() >= 8


def test_other_split_settings_get_their_own_manifest(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    """Two runs on one folder with other folds (e.g. a repeat with another data.split_seed) must not overwrite
    each other's manifest: ingest rewrites it on every run, and a run re-reads it when it evaluates."""
    root = write_dataset(tmp_path / "ds", 30)
    first = ingest(str(root), cfg)
    folds_42 = load_manifest(first.manifest_path)["fold"].tolist()
    other = ingest(str(root), load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=3", "data.split_seed=7"]))
    assert other.manifest_dir != first.manifest_dir
    assert load_manifest(first.manifest_path)["fold"].tolist() == folds_42  # untouched
    assert load_manifest(other.manifest_path)["fold"].tolist() != folds_42
    assert ingest(str(root), cfg).manifest_dir == first.manifest_dir  # same settings, same folder


def test_other_class_folders_map_by_config(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for folder in ("ok", "defect"):
        (root / folder).mkdir(parents=True)
        for i in range(8):
            distinct_image(hash(folder) % 1000 + i).save(root / folder / f"{i}.png")
    (root / "unsorted").mkdir()
    cfg = load_config([f"output_dir={tmp_path / 'o'}", "data.n_folds=2", "data.val_fraction=0.25",
                       "data.test_fraction=0.25", "~data.classes", "+data.classes.ok=good_weld",
                       "+data.classes.defect=bad_weld"])
    result = ingest(str(root), cfg)
    assert result.per_label == {"good_weld": 8, "bad_weld": 8}
    assert result.ignored_folders == ["unsorted"]


def test_too_few_groups_fails_with_advice(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 2)
    with pytest.raises(ValueError, match="independent"):
        ingest(str(root), cfg)


def test_missing_root_is_a_clear_error(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ingest(str(tmp_path / "nope"), cfg)


def test_resolve_dataset_accepts_manifest_and_its_folder(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 10)
    manifest = ingest(str(root), cfg).manifest_path
    cfg.data.root = str(manifest)
    assert resolve_dataset(cfg) == manifest
    cfg.data.root = str(manifest.parent)
    assert resolve_dataset(cfg) == manifest


def test_real_photos_ingest(real_welds_dir: Path, tmp_path: Path) -> None:
    cfg = load_config([f"output_dir={tmp_path}"])
    result = ingest(str(real_welds_dir), cfg)
    assert result.per_label == {"good_weld": 138, "bad_weld": 125}
    assert result.rejects == []
    df = load_manifest(result.manifest_path)
    assert (df[df["split"] != "excluded"].groupby("group")["split"].nunique() == 1).all()
    assert set(df["fold"]) == set(range(cfg.data.n_folds))


def test_a_reader_during_a_re_ingest_sees_the_whole_previous_manifest(
    tmp_path: Path, cfg, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """Every command that resolves a folder ingests it again: parallel runs (sweep trials, one process per fold)
    read the manifest while another rewrites it. A GPU ablation with 16 processes once read it half written."""
    import pyarrow.parquet as pq

    root = write_dataset(tmp_path / "ds", 10)
    path = ingest(str(root), cfg).manifest_path
    before = load_manifest(path)
    seen: list[pd.DataFrame] = []
    write_row_groups = pq.ParquetWriter.write_table

    def read_while_writing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        write_row_groups(self, *args, **kwargs)
        seen.append(load_manifest(path))  # mid-write: the rows are out, the footer is not

    monkeypatch.setattr(pq.ParquetWriter, "write_table", read_while_writing)
    ingest(str(root), cfg)
    assert seen and all(df.equals(before) for df in seen)
