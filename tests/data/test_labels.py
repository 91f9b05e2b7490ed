"""YOLO box labels at ingest: beside the class folders, the YOLO export layout, and malformed lines as rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.data.helpers import distinct_image, write_dataset
from weldray.config import ConfigError, load_config
from weldray.data import ingest, load_manifest
from weldray.data.labels import Box, LabelError, boxes_from_json, export_label_path, parse_yolo

NAMES = ["Bad Weld", "Good Weld", "Defect"]


@pytest.fixture()
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=3"])


def _write_labels(root: Path, folder: str, stems: list[str], text: str) -> None:
    (root / "labels" / folder).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (root / "labels" / folder / f"{stem}.txt").write_text(text)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("2 0.5 0.5 0.2", "expected 'class x_center"),
        ("2 0.5 0.5 0.2 0.1 0.3 0.4", "got 7 fields"),
        ("two 0.5 0.5 0.2 0.2", "not numbers"),
        ("3 0.5 0.5 0.2 0.2", "class 3 is not in data.yaml names"),
        ("2 0.5 1.5 0.2 0.2", "relative"),
        ("2 0.5 0.5 0.0 0.2", "width, height > 0"),
    ],
)
def test_malformed_lines_name_file_and_line(line: str, match: str) -> None:
    with pytest.raises(LabelError, match=match) as info:
        parse_yolo(f"1 0.5 0.5 0.4 0.2\n\n{line}\n", NAMES, "labels/x.txt")
    assert "labels/x.txt line 3" in str(info.value)


def test_boxes_parse_to_named_classes_and_pixels() -> None:
    boxes = parse_yolo("2 0.25 0.5 0.1 0.2\n1 0.5 0.5 1.0 0.4\n", NAMES, "a.txt")
    assert boxes == [Box("Defect", 0.25, 0.5, 0.1, 0.2), Box("Good Weld", 0.5, 0.5, 1.0, 0.4)]
    assert boxes[0].pixels(200, 100) == (40, 40, 60, 60)
    assert parse_yolo("0 0.5 0.5 0.1 0.1", None, "a.txt")[0].cls == "0"  # no data.yaml: the index is the name


def test_export_label_path_swaps_the_last_images_folder() -> None:
    assert export_label_path("images/train/a.jpg") == "labels/train/a.txt"
    assert export_label_path("train/images/b.png") == "train/labels/b.txt"
    assert export_label_path("labels/train/a.txt") is None


def test_boxes_beside_class_folders_go_into_the_manifest(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 10)
    (root / "labels").mkdir()
    (root / "labels" / "data.yaml").write_text(f"nc: 3\nnames: {json.dumps(NAMES)}\n")
    _write_labels(root, "good_welds", [f"good_{i:03d}" for i in range(9)], "1 0.5 0.5 0.8 0.3\n")
    _write_labels(root, "bad_welds", [f"bad_{i:03d}" for i in range(9)], "0 0.5 0.5 0.8 0.3\n2 0.4 0.5 0.1 0.1\n")
    (root / "labels" / "bad_welds" / "bad_008.txt").write_text("2 0.4 0.5 0.1\n")  # malformed
    result = ingest(str(root), cfg)

    assert "labels" not in result.ignored_folders  # never a class folder, never "unmapped"
    assert [(r.path, r.reason) for r in result.rejects] == [
        ("bad_welds/bad_008.jpg",
         f"malformed YOLO label: {root.resolve() / 'labels/bad_welds/bad_008.txt'} line 1: expected "
         "'class x_center y_center width height', got 4 fields")
    ]
    df = load_manifest(result.manifest_path).set_index("relpath")
    assert len(df) == 19  # 20 images, one rejected
    assert boxes_from_json(df.loc["bad_welds/bad_000.jpg", "boxes"]) == [
        Box("Bad Weld", 0.5, 0.5, 0.8, 0.3), Box("Defect", 0.4, 0.5, 0.1, 0.1)]
    assert boxes_from_json(df.loc["good_welds/good_000.jpg", "boxes"]) == [Box("Good Weld", 0.5, 0.5, 0.8, 0.3)]
    assert boxes_from_json(df.loc["good_welds/good_009.jpg", "boxes"]) is None  # no label file: not a reject
    summary = json.loads((result.manifest_dir / "summary.json").read_text())
    assert summary["box_labels"] == {"images_with_labels": 17,
                                     "boxes_per_class": {"Good Weld": 9, "Bad Weld": 8, "Defect": 8}}


def test_relative_dataset_root_finds_its_labels(tmp_path: Path, cfg, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root = write_dataset(tmp_path / "ds", 8)
    _write_labels(root, "good_welds", [f"good_{i:03d}" for i in range(8)], "0 0.5 0.5 0.8 0.3\n")
    monkeypatch.chdir(tmp_path)
    df = load_manifest(ingest("ds", cfg).manifest_path)
    assert df.loc[df["label"] == "good_weld", "boxes"].notna().all()
    assert boxes_from_json(df["boxes"].iloc[0]) == [Box("0", 0.5, 0.5, 0.8, 0.3)]  # no data.yaml: index names


def test_dataset_without_labels_is_unchanged(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    result = ingest(str(write_dataset(tmp_path / "ds", 8)), cfg)
    df = load_manifest(result.manifest_path)
    assert result.rejects == [] and len(df) == 16 and df["boxes"].isna().all()


def test_yolo_export_layout_labels_images_by_rule(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "export"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("names: {0: Bad Weld, 1: Good Weld, 2: Defect}\n")
    lines = {"bad": "0 0.5 0.5 0.5 0.5\n", "defect": "1 0.5 0.5 0.5 0.5\n2 0.5 0.5 0.1 0.1\n",
             "good": "1 0.5 0.5 0.5 0.5\n", "empty": ""}
    for i in range(24):
        kind = list(lines)[i % 4]
        distinct_image(500 + i).save(root / "images" / "train" / f"{kind}_{i}.jpg")
        if i != 23:
            (root / "labels" / "train" / f"{kind}_{i}.txt").write_text(lines[kind])
    result = ingest(str(root), cfg)
    df = load_manifest(result.manifest_path)
    by_kind = df.assign(kind=df["relpath"].str.extract(r"/(\w+?)_")[0]).groupby("kind")["label"].unique()
    assert {k: list(v) for k, v in by_kind.items()} == {
        "bad": ["bad_weld"], "defect": ["bad_weld"], "good": ["good_weld"], "empty": ["good_weld"]}
    assert [r.path for r in result.rejects] == ["images/train/empty_23.jpg"]
    assert "no YOLO label file" in result.rejects[0].reason

    bad_rule = load_config([f"output_dir={tmp_path / 'o2'}", "data.n_folds=3", "data.yolo_default_label=ok"])
    with pytest.raises(ConfigError, match="data.yolo_default_label"):
        ingest(str(root), bad_rule)


def test_real_photos_carry_their_boxes(real_welds_dir: Path, tmp_path: Path) -> None:
    result = ingest(str(real_welds_dir), load_config([f"output_dir={tmp_path}"]))
    df = load_manifest(result.manifest_path)
    boxes = pd.Series([boxes_from_json(b) for b in df["boxes"]], index=df.index)
    assert boxes.notna().all()
    n_defect_images = sum(any(b.cls == "Defect" for b in bs) for bs in boxes[df["label"] == "bad_weld"])
    assert n_defect_images == 105  # as the labels' README says
