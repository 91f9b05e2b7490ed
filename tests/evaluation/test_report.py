"""Evaluation report on the procedural sample with an untrained (but real) checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weldray.config import ModelConfig, load_config
from weldray.evaluation.metrics import expected_calibration_error, fit_temperature, softmax


def test_temperature_scaling_reduces_overconfidence() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    signal = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.0, 400)
    logits = np.stack([-signal, signal], 1) * 6.0  # far too confident
    t = fit_temperature(logits, labels)
    assert t > 2.0
    assert expected_calibration_error(softmax(logits, t), labels) < expected_calibration_error(
        softmax(logits), labels
    )


def test_ece_of_perfect_calibration_is_small() -> None:
    rng = np.random.default_rng(1)
    p1 = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, 20000) < p1).astype(int)
    assert expected_calibration_error(np.stack([1 - p1, p1], 1), labels) < 0.02


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dataclasses import asdict

    from weldray.models import CheckpointMeta, build_classifier, save_checkpoint

    cfg = ModelConfig(pretrained=False, image_size=64, embedding_dim=16)
    model = build_classifier(cfg, 2, classes=["good_weld", "bad_weld"])
    d = tmp_path_factory.mktemp("run")
    save_checkpoint(
        d / "model.pt",
        model,
        CheckpointMeta(
            classes=model.classes, image_size=64, model=asdict(cfg), temperature=2.0, run_id="untrained"
        ),
    )
    return d


def test_evaluate_writes_report_with_expected_figures(
    run_dir: Path, procedural_dir: Path, tmp_path: Path
) -> None:
    from weldray.evaluation import evaluate

    cfg = load_config([f"data.root={procedural_dir}", f"output_dir={tmp_path}", "training.tta=true"])
    report = evaluate(run_dir, cfg)
    out = report.parent
    assert report.name == "report.md" and out.parent == run_dir
    for png in ("confusion_matrix.png", "confusion_matrix_tta.png", "roc.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000, png
    m = json.loads((out / "metrics.json").read_text())
    n = 32  # 16 + 16 procedural images, a dataset the run never trained on: all rows
    assert m["n"] == n
    for key in ("single_view", "tta"):
        res = m[key]
        assert np.asarray(res["confusion_matrix"]).sum() == n
        cm = np.asarray(res["confusion_matrix"])
        assert res["accuracy"] == pytest.approx(np.trace(cm) / n)
        recalls = cm.diagonal() / cm.sum(1)
        assert res["balanced_accuracy"] == pytest.approx(recalls.mean())
        assert 0.0 <= res["roc_auc"] <= 1.0
    assert 0.0 <= m["ece_before_temperature"] <= 1.0 and 0.0 <= m["ece_after_temperature"] <= 1.0
    text = report.read_text()
    assert "balanced_accuracy" in text and "10x TTA" in text and "temperature" in text
    if m["errors"]:
        assert (out / "confident_errors.png").is_file()
        confs = [e["confidence"] for e in m["errors"]]
        assert confs == sorted(confs, reverse=True)
    if len(m["errors"]) < n:  # a run's own report shows what the model looks at when it is right, too
        assert (out / "correct_examples.png").stat().st_size > 1000 and "## Correct answers" in text


def test_gallery_puts_each_photo_beside_its_heatmap(procedural_dir: Path, tmp_path: Path) -> None:
    import pandas as pd
    from PIL import Image

    from weldray.config import ModelConfig
    from weldray.evaluation.report import heatmap_explainer, plot_gallery
    from weldray.models import build_classifier
    from weldray.preprocessing import load_image

    model = build_classifier(ModelConfig(pretrained=False, image_size=64), 2, pretrained=False).eval()
    explain = heatmap_explainer(model, 64)
    paths = sorted(str(p) for p in procedural_dir.glob("*_welds/*.jpg"))[:3]
    photo = np.asarray(load_image(paths[0]), float)
    overlays = [np.asarray(explain(paths[0], k), float) for k in (0, 1)]
    assert all(o.shape == photo.shape for o in overlays)
    assert max(np.abs(o - photo).mean() for o in overlays) > 1  # the evidence for one class at least is drawn
    rows = pd.DataFrame({"path": paths, "label_index": [0, 1, 0], "pred": [1, 1, 0], "confidence": [0.9, 0.8, 0.7]})
    calls: list[tuple[str, int]] = []

    def recording(path: str, k: int):
        calls.append((path, k))
        return explain(path, k)

    plot_gallery(rows, tmp_path / "g.png", ["good_weld", "bad_weld"], recording)
    assert calls == list(zip(paths, [1, 1, 0], strict=True))  # the heatmap of the *predicted* class
    width, height = Image.open(tmp_path / "g.png").size
    assert width > 1.5 * height  # two photo | heatmap pairs per row


def test_evaluate_cli_prints_report_path_last(run_dir: Path, procedural_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from weldray.cli import app

    result = CliRunner().invoke(
        app, ["evaluate", str(run_dir), str(procedural_dir), f"output_dir={tmp_path}"]
    )
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.endswith("report.md") and Path(last).is_file()
