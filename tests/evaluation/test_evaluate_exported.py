"""`weldray evaluate MODEL.onnx DATA`: a shipped model (one model or an ensemble graph) scored on labelled photos
through WeldClassifierInference, as it is served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.export.models import export_small, make_checkpoint
from weldray.config import ConfigError, WeldrayConfig, load_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, procedural_dir: Path) -> Path:
    """A random-weight checkpoint (temperature 1.5, trained on no manifest of the tests) exported to ONNX."""
    return export_small(tmp_path_factory.mktemp("exported"), procedural_dir).path


def _cfg(data: Path, out: Path, *overrides: str) -> WeldrayConfig:
    return load_config([f"data.root={data}", f"output_dir={out}", *overrides])


def test_an_exported_model_scores_what_its_checkpoint_scores(
    exported: Path, procedural_dir: Path, tmp_path: Path
) -> None:
    """The ONNX model's report on photos it never saw equals its run directory's (same photos, same temperature):
    every photo, the same confusion matrix, the same probabilities; with the heatmap gallery of its own maps."""
    from weldray.evaluation import evaluate
    from weldray.evaluation.metrics import softmax
    from weldray.evaluation.report import read_predictions

    cfg = _cfg(procedural_dir, tmp_path)
    report = evaluate(exported, cfg)
    assert report.parent.parent == exported.parent
    assert report.parent.name.startswith(f"weld_classifier_report_{procedural_dir.name}-")
    onnx = json.loads((report.parent / "metrics.json").read_text())
    torch_report = evaluate(exported.parent.parent / "run", cfg)
    pt = json.loads((torch_report.parent / "metrics.json").read_text())
    assert onnx["n"] == pt["n"] == 32
    assert onnx["single_view"]["confusion_matrix"] == pt["single_view"]["confusion_matrix"]
    assert onnx["single_view"]["balanced_accuracy"] == pt["single_view"]["balanced_accuracy"]
    for key in ("temperature", "ece_before_temperature", "ece_after_temperature"):
        assert onnx[key] == pytest.approx(pt[key], abs=1e-4), key
    rows_onnx, served = read_predictions(report.parent)
    rows_pt, logits = read_predictions(torch_report.parent)
    assert rows_onnx["path"].tolist() == rows_pt["path"].tolist()
    np.testing.assert_allclose(softmax(served, 1.5), softmax(logits, 1.5), atol=1e-4)
    np.testing.assert_allclose(softmax(served), softmax(logits), atol=1e-4)  # before calibration too
    text = report.read_text()
    assert str(exported) in text and "fp32, CPUExecutionProvider" in text
    assert "temperature 1.500 (exported with the model)" in text
    if onnx["errors"]:
        assert (report.parent / "confident_errors.png").stat().st_size > 1000


def test_an_ensemble_graph_is_scored_as_one_model(procedural_dir: Path, tmp_path: Path) -> None:
    """Two members exported as one graph: the report's probabilities are the mean of the members' calibrated
    ones (each member's own report), and it says the members carry their own temperatures."""
    from weldray.config import load_config as load
    from weldray.evaluation import evaluate
    from weldray.evaluation.metrics import softmax
    from weldray.evaluation.report import read_predictions
    from weldray.export import export_checkpoint

    runs = [make_checkpoint(tmp_path / f"run{s}" / "model.pt", seed=s).parent for s in (0, 1)]
    export_cfg = load([f"export.check_images={procedural_dir}", "export.parity_images=8",
                       f"output_dir={tmp_path / 'outputs'}"])
    graph = export_checkpoint(runs, export_cfg, output=tmp_path / "ens" / "weld_classifier.onnx").path
    cfg = _cfg(procedural_dir, tmp_path)
    report = evaluate(graph, cfg)
    _, log_p = read_predictions(report.parent)
    members = [read_predictions(evaluate(run, cfg).parent)[1] for run in runs]
    np.testing.assert_allclose(np.exp(log_p), np.mean([softmax(z, 1.5) for z in members], axis=0), atol=1e-4)
    assert "temperature 1.000 (each of its 2 members is calibrated at its own temperature" in report.read_text()


def test_the_photos_it_trained_on_and_ten_views_are_refused(
    exported: Path, procedural_dir: Path, tmp_path: Path
) -> None:
    """Its own training manifest is refused (unless training.eval_split names rows), and 10-view TTA, which an
    exported model does not serve, is a config error before any photo is read."""
    from weldray.data import manifest_sha256, resolve_dataset
    from weldray.evaluation import evaluate

    cfg = _cfg(procedural_dir, tmp_path)
    with pytest.raises(ConfigError, match="^training.tta: "):
        evaluate(exported, _cfg(procedural_dir, tmp_path, "training.tta=true"))
    trained = tmp_path / "trained" / "weld_classifier.onnx"
    trained.parent.mkdir()
    trained.write_bytes(exported.read_bytes())
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    sidecar["manifest_sha256"] = manifest_sha256(resolve_dataset(cfg))
    trained.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(ConfigError, match="was trained on .* would include training photos"):
        evaluate(trained, cfg)
    report = evaluate(trained, _cfg(procedural_dir, tmp_path, "training.eval_split=all"))
    assert json.loads((report.parent / "metrics.json").read_text())["n"] == 32


def test_evaluate_cli_takes_an_onnx_model(exported: Path, procedural_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from weldray.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(exported), str(procedural_dir), f"output_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.endswith("report.md") and Path(last).is_file()
    refused = CliRunner().invoke(
        app, ["evaluate", str(exported), str(procedural_dir), f"output_dir={tmp_path}", "training.tta=true"]
    )
    assert refused.exit_code == 2 and "config error: training.tta" in refused.output
    assert "Traceback" not in refused.output


def test_a_model_on_s3_is_scored_and_its_report_kept_locally(
    exported: Path, procedural_dir: Path, tmp_path: Path, s3_server: str
) -> None:
    import boto3

    from weldray.evaluation import evaluate

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="models")
    for f in (exported, exported.with_suffix(".json")):
        s3.upload_file(str(f), "models", f"v1/{f.name}")
    cfg = _cfg(procedural_dir, tmp_path)
    report = evaluate("s3://models/v1/weld_classifier.onnx", cfg)
    assert report.parent.parent == tmp_path / "evaluations" and report.parent.name.startswith("weld_classifier-")
    local = json.loads((evaluate(exported, cfg).parent / "metrics.json").read_text())
    remote = json.loads((report.parent / "metrics.json").read_text())
    assert remote["single_view"]["confusion_matrix"] == local["single_view"]["confusion_matrix"]
    assert "s3://models/v1/weld_classifier.onnx" in report.read_text()
