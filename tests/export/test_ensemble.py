"""Ensembles exported as one ONNX graph: the mean of the members' calibrated probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.export.models import CLASSES, make_checkpoint


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("members")
    return [make_checkpoint(tmp / f"run{seed}" / "model.pt", seed=seed).parent for seed in (0, 1, 2)]


OOF_T = 1.7


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory, members: list[Path], procedural_dir: Path):
    """What ``weldray cv --ensemble`` exports: the fold models, each calibrated by the out-of-fold temperature."""
    from weldray.config import load_config
    from weldray.training.cv import export_fold_ensemble

    tmp = tmp_path_factory.mktemp("ensemble")
    cfg = load_config(
        [f"export.check_images={procedural_dir}", "export.parity_images=8", f"output_dir={tmp / 'outputs'}"]
    )
    summary = {
        "folds": [{"fold": k, "run_dir": str(run)} for k, run in enumerate(members)],
        "oof_temperature": OOF_T,
        "path": str(tmp / "outputs" / "cv" / "cv-test.json"),
    }
    return export_fold_ensemble(cfg, summary)


def test_ensemble_graph_is_the_mean_of_its_calibrated_members(
    ensemble, members: list[Path], procedural_dir: Path
) -> None:
    import torch

    from weldray.export.parity import load_inputs
    from weldray.inference import WeldClassifierInference, softmax
    from weldray.models import load_checkpoint

    assert ensemble.report["onnx_vs_torch"]["argmax_agreement"] == 1.0
    photos = sorted(str(p) for p in procedural_dir.glob("*_welds/*.jpg"))[:6]
    x, _ = load_inputs(photos, 64)
    with torch.no_grad():
        per_member = [
            softmax(load_checkpoint(run)[0](torch.from_numpy(x)).numpy(), OOF_T)
            for run in members
        ]
    clf = WeldClassifierInference(ensemble.path, providers="cpu")
    np.testing.assert_allclose(clf.probabilities(x), np.mean(per_member, axis=0), atol=1e-5)
    assert clf.temperature == 1.0 and clf.metadata["ensemble_members"] == 3
    assert [m["temperature"] for m in clf.sidecar.members] == [OOF_T] * 3
    assert Path(ensemble.path).parts[-4:] == ("cv", "cv-test", "ensemble", "weld_classifier.onnx")
    assert clf.predict(photos[0])["class"] in CLASSES
    with pytest.raises(ValueError, match="no class-map output"):  # heatmaps are per model, not per ensemble
        clf.explain(photos[0])


def test_members_must_share_classes_and_input_size(tmp_path: Path, members: list[Path]) -> None:
    from weldray.export.ensemble import load_ensemble

    other = make_checkpoint(tmp_path / "big" / "model.pt", image_size=96).parent
    with pytest.raises(ValueError, match="share classes and input size"):
        load_ensemble([members[0], other])


def test_export_cli_takes_several_runs(tmp_path: Path, members: list[Path], procedural_dir: Path) -> None:
    from typer.testing import CliRunner

    from weldray.cli import app

    out = tmp_path / "e.onnx"
    result = CliRunner().invoke(
        app,
        ["export", str(members[0]), str(members[1]), "-o", str(out), f"export.check_images={procedural_dir}",
         "export.parity_images=4", f"output_dir={tmp_path / 'outputs'}"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    import json

    side = json.loads(out.with_suffix(".json").read_text())
    # Final fits (e.g. seeds) keep their own temperatures, applied inside the graph.
    assert [m["temperature"] for m in side["members"]] == [1.5, 1.5] and side["temperature"] == 1.0


def test_ensemble_int8_keeps_every_members_leading_layers_in_float(
    tmp_path: Path, members: list[Path], procedural_dir: Path
) -> None:
    """``export.int8_float_layers=N`` on an ensemble graph means the first N layers of *each* member (a prefix
    of the graph's node order would cover the first member only), and the INT8 ensemble serves like fp32."""
    import onnx

    from weldray.config import load_config
    from weldray.export import export_checkpoint
    from weldray.export.parity import load_inputs
    from weldray.export.quantize import leading_layers
    from weldray.inference import WeldClassifierInference
    from weldray.inference.sidecar import choose_precision

    cfg = load_config(
        [f"export.check_images={procedural_dir}", "export.parity_images=8", "export.calibration_images=8",
         "export.int8_float_layers=[1000]", f"output_dir={tmp_path / 'outputs'}"]
    )
    result = export_checkpoint(members, cfg, fmt="int8", output=tmp_path / "e.onnx")
    fp32 = result.artefacts["onnx"]
    nodes = {n.name: n.op_type for n in onnx.load(fp32).graph.node}
    for n in (1, 4, 12):
        assert sum(nodes[name] == "Conv" for name in leading_layers(fp32, n)) == 3 * n
    assert len(leading_layers(fp32, 1000)) == len(nodes)  # past every member's last layer: all float
    # All layers float: the search's last resort, so the INT8 ensemble answers exactly as the fp32 one does.
    assert result.sidecar.precision == "int8" and len(result.sidecar.members) == 3
    x, _ = load_inputs(sorted(str(p) for p in procedural_dir.glob("*_welds/*.jpg"))[:4], 64)
    np.testing.assert_allclose(
        WeldClassifierInference(result.path, providers="cpu").probabilities(x),
        WeldClassifierInference(fp32, providers="cpu").probabilities(x),
        atol=1e-4,
    )
    chosen, why = choose_precision(fp32, "int8", cpu=True)
    assert chosen == str(result.path), why
