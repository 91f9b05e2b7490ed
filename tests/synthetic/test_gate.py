"""The quality gate: the teacher keeps images of their intended class, near-duplicates of other real photos go."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.data.helpers import distinct_image
from weldray.config import load_config
from weldray.data import ingest, load_manifest
from weldray.synthetic.gate import Teacher, acceptance, judge

# timm's test-size EfficientNet, random init: the teacher's features in milliseconds.
TINY_MODEL = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.image_size=64"]


def _tinted(seed: int, red: bool) -> np.ndarray:
    arr = np.asarray(distinct_image(seed, 96)).astype(np.float32) * 0.5
    arr[..., 0 if red else 2] += 120
    return np.clip(arr, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_rows(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Bad photos are red, good ones blue: a teacher on any features must tell them apart."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("gate")
    for folder, red in (("good_welds", False), ("bad_welds", True)):
        (tmp / "ds" / folder).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(_tinted(300 * red + i, red)).save(tmp / "ds" / folder / f"{i}.png")
    cfg = load_config(["profile=quick_test", f"output_dir={tmp / 'out'}", "data.n_folds=2", *TINY_MODEL,
                       "synthetic.min_teacher_confidence=0.6"])
    return cfg, load_manifest(ingest(str(tmp / "ds"), cfg).manifest_path)


def test_teacher_keeps_the_intended_class_and_drops_the_other(colour_rows) -> None:  # type: ignore[no-untyped-def]
    cfg, rows = colour_rows
    teacher = Teacher(cfg, rows)
    assert teacher.train_ids == sorted(rows["relpath"])  # fitted on exactly the rows it was given
    images = [_tinted(900, red=True), _tinted(901, red=False), _tinted(902, red=True)]
    verdicts = judge(teacher, images, ["bad_weld", "good_weld", "good_weld"], [[], [], []], rows, cfg)
    assert [v.accepted for v in verdicts] == [True, True, False], verdicts
    assert verdicts[0].teacher_confidence >= 0.6 and verdicts[2].teacher_confidence < 0.6
    assert "teacher confidence" in verdicts[2].reason


def test_near_duplicates_of_other_real_photos_are_dropped(colour_rows) -> None:  # type: ignore[no-untyped-def]
    cfg, rows = colour_rows
    photo = rows[rows["label"] == "bad_weld"].iloc[0]
    from weldray.preprocessing import load_image

    copy = np.asarray(load_image(photo["path"]))
    as_copy, as_own = judge(None, [copy, copy], ["bad_weld", "bad_weld"], [[], [photo["relpath"]]], rows, cfg)
    assert not as_copy.accepted and "near-duplicate" in as_copy.reason and as_copy.nearest_real_distance == 0
    # The same pixels made FROM that photo (copy-paste keeps its background) are not a copy of another photo.
    assert as_own.accepted and as_own.nearest_real_distance > cfg.data.near_duplicate_distance


def test_acceptance_is_reported_per_class() -> None:
    records = pd.DataFrame({
        "status": ["ok", "ok", "ok", "reject"], "label": ["bad_weld", "bad_weld", "good_weld", "good_weld"],
        "accepted": [True, False, True, False],
        "gate_reason": ["", "teacher confidence 0.10 < 0.5", "", ""],
    })
    assert acceptance(records) == {
        "bad_weld": {"generated": 2, "accepted": 1, "acceptance_rate": 0.5, "dropped_by": {"teacher": 1}},
        "good_weld": {"generated": 1, "accepted": 1, "acceptance_rate": 1.0, "dropped_by": {}},
    }


@pytest.mark.slow
def test_gate_on_real_photos_is_fitted_on_train_rows_only(real_welds_dir: Path, tmp_path: Path) -> None:
    """The teacher of a CV fold never sees that fold's photos."""
    from weldray.training.data import split_rows

    cfg = load_config([f"output_dir={tmp_path}", *TINY_MODEL])
    manifest = load_manifest(ingest(str(real_welds_dir), cfg).manifest_path)
    train = split_rows(manifest, 0).train
    teacher = Teacher(cfg, train.groupby("label").head(12))
    assert len(teacher.train_ids) == 24
    assert set(teacher.train_ids).isdisjoint(manifest.loc[manifest["fold"] == 0, "relpath"])
    with pytest.raises(ValueError, match="both classes"):
        Teacher(cfg, train[train["label"] == "good_weld"].head(5))
