"""The seed ensemble's cross-validation figures, from member CVs' out-of-fold predictions (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from weldray.config import WeldrayConfig, load_config
from weldray.evaluation.report import PREDICTIONS_FILE
from weldray.training.cv import summarize_seed_ensemble

PATHS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
LABELS = [0, 0, 1, 1]


def _member(
    tmp: Path, name: str, wrong: str, temperature: float = 1.0, reverse: bool = False, tta: bool = False
) -> dict:
    """A one-fold member CV that is confidently right on every photo but ``wrong``, where it errs mildly; with
    ``tta``, evaluated with two views, the second confidently right on every photo."""
    run_dir = tmp / "runs" / f"{name}-fold0"
    (run_dir / "report").mkdir(parents=True)
    margin = [(-0.5 if p == wrong else 2.0) * temperature for p in PATHS]  # for the true class, before T
    logits = [[0.0, m] if y else [m, 0.0] for m, y in zip(margin, LABELS, strict=True)]
    if tta:
        right = [[0.0, 2.0 * temperature] if y else [2.0 * temperature, 0.0] for y in LABELS]
        logits = [[view, r] for view, r in zip(logits, right, strict=True)]
    rows = pd.DataFrame({"path": PATHS, "label_index": LABELS, "logits": logits})
    (rows.iloc[::-1] if reverse else rows).to_parquet(run_dir / "report" / PREDICTIONS_FILE, index=False)
    return {
        "name": name,
        "path": str(tmp / "cv" / f"{name}.json"),
        "folds": [{"fold": 0, "run_dir": str(run_dir), "balanced_accuracy": 0.75}],
        "oof_temperature": temperature,
    }


@pytest.fixture
def cfg(tmp_path: Path) -> WeldrayConfig:
    return load_config([f"output_dir={tmp_path}"])


def test_the_ensemble_averages_calibrated_member_probabilities_photo_by_photo(cfg: WeldrayConfig) -> None:
    """Three members, each wrong on another photo, listed in any order and at their own temperatures: the mean
    of their calibrated probabilities is right on all four photos, and each fold's row keeps the members'."""
    tmp = Path(cfg.output_dir)
    members = [
        _member(tmp, "m42", "b.jpg"),
        _member(tmp, "m43", "c.jpg", temperature=3.0, reverse=True),
        _member(tmp, "m44", "d.jpg"),
    ]
    summary = summarize_seed_ensemble(cfg, members, "ens")
    fold = summary["folds"][0]
    assert fold["balanced_accuracy"] == summary["balanced_accuracy_mean"] == 1.0
    assert fold["member_balanced_accuracy"] == [0.75, 0.75, 0.75]
    assert summary["member_balanced_accuracy_mean"] == 0.75
    assert summary["members"] == [m["path"] for m in members]
    assert summary["oof"]["n"] == 4 and summary["oof"]["roc_auc"] == 1.0
    assert json.loads((tmp / "cv" / "ens.json").read_text()) == summary
    assert Path(summary["report"]).is_file()


def test_members_that_held_out_different_photos_are_refused(cfg: WeldrayConfig) -> None:
    tmp = Path(cfg.output_dir)
    other = _member(tmp, "m43", "c.jpg")
    moved = Path(other["folds"][0]["run_dir"]) / "report" / PREDICTIONS_FILE
    pd.read_parquet(moved).assign(path=["a.jpg", "b.jpg", "c.jpg", "e.jpg"]).to_parquet(moved, index=False)
    with pytest.raises(ValueError, match="held out different photos in fold 0"):
        summarize_seed_ensemble(cfg, [_member(tmp, "m42", "b.jpg"), other], "ens")
    two_folds = _member(tmp, "m44", "d.jpg")
    two_folds["folds"].append({**two_folds["folds"][0], "fold": 1})
    with pytest.raises(ValueError, match="do not cover the same folds"):
        summarize_seed_ensemble(cfg, [_member(tmp, "m45", "b.jpg"), two_folds], "ens")


def test_members_probabilities_are_not_the_ensembles_logits(cfg: WeldrayConfig) -> None:
    """Averaging probabilities, not logits: one very confident wrong member is outvoted by two mildly right ones
    only when probabilities are averaged (its logit would dominate a mean of logits)."""
    tmp = Path(cfg.output_dir)
    members = [_member(tmp, f"m{i}", "none") for i in range(3)]
    path = Path(members[0]["folds"][0]["run_dir"]) / "report" / PREDICTIONS_FILE
    rows = pd.read_parquet(path)
    rows.at[0, "logits"] = [0.0, 50.0]  # a.jpg
    rows.to_parquet(path, index=False)
    summary = summarize_seed_ensemble(cfg, members, "ens")
    assert summary["folds"][0]["balanced_accuracy"] == 1.0  # a mean of logits, [1.3, 16.7], errs on a.jpg


def test_final_fits_of_consecutive_seeds_find_the_cv_of_their_ensemble(cfg: WeldrayConfig) -> None:
    """`weldray export RUN RUN RUN` of the final fits of seeds 42-44 finds `weldray cv --seeds 3`'s figures (its
    model card quotes them); other seeds or recipes do not."""
    from dataclasses import asdict, replace

    from weldray.export.model_card import _ensemble_figures
    from weldray.training.cv import seed_ensemble_name, seed_ensemble_summary

    tmp = Path(cfg.output_dir)
    members = [_member(tmp, f"m{s}", p) for s, p in ((42, "b.jpg"), (43, "c.jpg"), (44, "d.jpg"))]
    summary = summarize_seed_ensemble(cfg, members, seed_ensemble_name(cfg, 3))
    fits = [replace(cfg, seed=s) for s in (44, 42, 43)]
    assert seed_ensemble_summary(fits) == summary
    assert seed_ensemble_summary([fits[1], fits[0]]) is None  # seeds 42 and 44
    longer = replace(fits[2], training=replace(fits[2].training, epochs=99))
    assert seed_ensemble_summary([fits[1], longer]) is None
    line = _ensemble_figures([asdict(c) for c in fits])
    assert "balanced accuracy 1.000 ± 0.000 over 1 folds (one seed alone: 0.750)" in line
    assert summary["path"] in line
    assert "not measured" in _ensemble_figures([asdict(fits[1]), asdict(longer)])


def test_with_tta_the_ensemble_also_reports_its_members_votes_over_views(
    cfg: WeldrayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`weldray cv --seeds N training.tta=true`: members all wrong on b.jpg in the identity view but right in
    another view. The ensemble's single view keeps the error, its TTA figure (each member's views, then the
    members) does not; one member without TTA leaves the single-view figures only."""
    from PIL import Image

    tmp = Path(cfg.output_dir)
    monkeypatch.chdir(tmp)
    for p in PATHS:  # the report's gallery shows the error
        Image.new("RGB", (32, 32), "gray").save(p)
    members = [_member(tmp, f"m{s}", "b.jpg", temperature=t, tta=True) for s, t in ((42, 1.0), (43, 3.0))]
    summary = summarize_seed_ensemble(cfg, members, "ens")
    fold = summary["folds"][0]
    assert fold["balanced_accuracy"] == summary["balanced_accuracy_mean"] == 0.75
    assert fold["tta_balanced_accuracy"] == summary["tta_balanced_accuracy_mean"] == 1.0
    assert fold["tta_roc_auc"] == 1.0
    report = Path(summary["report"]).read_text()
    assert "TTA" in report
    without = summarize_seed_ensemble(cfg, [*members, _member(tmp, "m44", "b.jpg")], "ens3")
    assert without["balanced_accuracy_mean"] == 0.75
    assert "tta_balanced_accuracy_mean" not in without and "tta_balanced_accuracy" not in without["folds"][0]


def test_a_finished_cv_without_tta_figures_is_not_reused_when_tta_is_asked(cfg: WeldrayConfig) -> None:
    from dataclasses import replace

    from weldray.training.cv import cv_summary_path, finished_summary, recipe_fingerprint

    path = cv_summary_path(cfg, "m42")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"recipe_fingerprint": recipe_fingerprint(cfg), "folds": [{"fold": 0}]}))
    with_tta = replace(cfg, training=replace(cfg.training, tta=True))
    assert finished_summary(cfg, "m42", [0]) is not None
    assert finished_summary(with_tta, "m42", [0]) is None
    path.write_text(json.dumps({**json.loads(path.read_text()), "tta_balanced_accuracy_mean": 0.8}))
    assert finished_summary(with_tta, "m42", [0]) is not None
