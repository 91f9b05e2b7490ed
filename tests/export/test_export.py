"""ONNX export parity (real photos and procedural images), INT8 agreement, TensorRT gating."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.export.models import CLASSES, export_small, make_checkpoint


def test_onnx_export_parity_on_real_photos(tmp_path: Path, real_welds_dir: Path) -> None:
    import onnx

    result = export_small(tmp_path, real_welds_dir, n=16)
    check = result.report["onnx_vs_torch"]
    assert check["n"] == 16 and check["argmax_agreement"] == 1.0 and check["max_abs_prob_diff"] < 1e-4
    assert "welds" in result.report["check_images"]
    proto = onnx.load(str(result.path))
    assert proto.opset_import[0].version == 20
    dim = proto.graph.input[0].type.tensor_type.shape.dim
    assert dim[0].dim_param and [d.dim_value for d in dim[1:]] == [3, 64, 64]  # dynamic batch, fixed CHW
    assert not list(tmp_path.glob("onnx/*.data"))  # weights embedded: one file
    side = json.loads(result.path.with_suffix(".json").read_text())
    assert side["classes"] == CLASSES and side["input_size"] == 64 and side["temperature"] == 1.5
    assert side["run_id"] == "test-run" and side["manifest_sha256"] == "0" * 64
    assert side["preprocessing"]["normalization"] == "inside the model graph"


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_dynamic_batch_matches_torch_on_procedural_images(
    tmp_path_factory, procedural_dir: Path, batch: int
) -> None:
    import torch

    from weldray.export.parity import load_inputs
    from weldray.inference import WeldClassifierInference, softmax
    from weldray.io import list_files
    from weldray.models import load_checkpoint

    tmp = tmp_path_factory.getbasetemp() / "dyn"
    path = tmp / "onnx" / "weld_classifier.onnx"
    if not path.exists():
        export_small(tmp, procedural_dir, n=8)
    model, meta = load_checkpoint(tmp / "run")
    files = [f for f in list_files(procedural_dir, [".jpg"])][:batch]
    x, _ = load_inputs(files, 64)
    with torch.no_grad():
        expected = softmax(model(torch.from_numpy(x)).numpy(), meta.temperature)
    got = WeldClassifierInference(path, providers="cpu").probabilities(x)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_convnext_export_is_rewritten_and_exact(tmp_path: Path, procedural_dir: Path) -> None:
    """ConvNeXt-V2: GELU fused into one node and GlobalResponseNorm factored, still equal to PyTorch."""
    import collections

    import onnx

    result = export_small(tmp_path, procedural_dir, n=8, backbone="convnextv2_atto")
    check = result.report["onnx_vs_torch"]
    assert check["argmax_agreement"] == 1.0 and check["max_abs_prob_diff"] < 1e-4
    ops = collections.Counter(n.op_type for n in onnx.load(str(result.path)).graph.node)
    blocks = 2 + 2 + 6 + 2  # convnextv2_atto: one GELU and one GlobalResponseNorm per block
    assert ops["Gelu"] == blocks and "Erf" not in ops
    assert ops["ReduceL2"] == blocks + 1  # the GRNs + the cosine head's embedding norm


def test_parity_failure_removes_the_export(tmp_path: Path, procedural_dir: Path, monkeypatch) -> None:
    """A graph that disagrees with its checkpoint must not survive the export."""
    from weldray.export import ParityError, pipeline

    real = pipeline.torch_probabilities
    monkeypatch.setattr(pipeline, "torch_probabilities", lambda *a, **k: real(*a, **k)[:, ::-1].copy())
    with pytest.raises(ParityError, match="argmax agreement"):
        export_small(tmp_path, procedural_dir, n=8)
    assert not (tmp_path / "onnx" / "weld_classifier.onnx").exists()
    assert not (tmp_path / "onnx" / "weld_classifier.json").exists()


def test_missing_check_images_is_a_clear_error(tmp_path: Path) -> None:
    from weldray.config import load_config
    from weldray.export import NoCheckImagesError, export_checkpoint

    ckpt = make_checkpoint(tmp_path / "run" / "model.pt")
    cfg = load_config([f"output_dir={tmp_path / 'outputs'}"])
    with pytest.raises(NoCheckImagesError, match="export.check_images"):
        export_checkpoint(ckpt, cfg, output=tmp_path / "m.onnx")


def test_int8_static_qdq_agrees_with_fp32(tmp_path: Path, real_welds_dir: Path) -> None:
    """Untrained weights give near-tied probabilities, where any rounding can flip the argmax; so the
    export threshold is relaxed here and agreement is asserted where fp32 is decisive."""
    import onnx

    from weldray.export.parity import load_inputs, session_probabilities
    from weldray.inference import create_session
    from weldray.io import list_files

    k = 12
    result = export_small(
        tmp_path,
        real_welds_dir,
        fmt="int8",
        n=24,
        overrides=("export.min_int8_agreement=0.5", f"export.int8_float_layers=[{k}]", "export.int8_check_images=48"),
    )
    assert result.path.name == "weld_classifier.int8.onnx"
    q = result.report["int8"]
    assert q["vs_fp32"]["argmax_agreement"] >= 0.8 and q["vs_fp32"]["max_abs_prob_diff"] < 0.15
    assert q["size_mb"] < 0.5 * q["fp32_size_mb"]
    graph = onnx.load(str(result.path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops  # static QDQ
    # uint8 activations (ONNX Runtime's fast x86 int8 path), int8 per-channel weights
    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    # The first k convolutions keep float weights; the later ones are int8.
    produced_by = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantised = [n.input[1] in produced_by and produced_by[n.input[1]].op_type == "DequantizeLinear" for n in convs]
    assert q["float_layers"] == k and len(convs) > k and not any(quantised[:k]) and all(quantised[k:])
    assert json.loads(result.path.with_suffix(".json").read_text())["precision"] == "int8"
    x, _ = load_inputs(list_files(real_welds_dir, [".jpg"])[::8], 64)
    p32 = session_probabilities(
        create_session(str(tmp_path / "onnx" / "weld_classifier.onnx"), "CPUExecutionProvider"), x, 1.5
    )
    p8 = session_probabilities(create_session(str(result.path), "CPUExecutionProvider"), x, 1.5)
    decisive = np.abs(p32[:, 0] - p32[:, 1]) > 0.1
    assert decisive.sum() >= 3
    assert (p32.argmax(1) == p8.argmax(1))[decisive].all()


def test_int8_below_agreement_is_refused_with_the_table_of_tries(
    tmp_path: Path, procedural_dir: Path, monkeypatch
) -> None:
    """The INT8 gate: no setting agreeing with fp32 deletes the INT8 model and lists every setting tried."""
    from weldray.export import ParityError, pipeline

    real = pipeline.session_probabilities

    def flip_int8(session, *a, **k):
        p = real(session, *a, **k)
        return p[:, ::-1].copy() if session._model_path.endswith(".int8.onnx") else p

    monkeypatch.setattr(pipeline, "session_probabilities", flip_int8)
    with pytest.raises(ParityError, match=r"INT8 vs fp32: no setting reached the required 99.00%") as err:
        export_small(tmp_path, procedural_dir, fmt="int8", n=8, overrides=("export.int8_float_layers=[0,4]",))
    assert "0 float layers, minmax     agreement 0.00%" in str(err.value)
    assert "4 float layers, minmax     agreement 0.00%" in str(err.value)
    assert not (tmp_path / "onnx" / "weld_classifier.int8.onnx").exists()
    assert not (tmp_path / "onnx" / "weld_classifier.int8.json").exists()
    assert (tmp_path / "onnx" / "weld_classifier.onnx").exists()  # the fp32 model passed its own check


def test_int8_search_keeps_the_first_setting_that_passes(tmp_path: Path, real_welds_dir: Path) -> None:
    """A model on the edge of its decision boundary: all-INT8 flips argmaxes, so the search must go on to a
    setting that keeps enough of the network in float, and say what it tried; gated on photos the
    quantiser never calibrated on."""
    from weldray.io import list_files

    photos = list_files(real_welds_dir, [".jpg"])
    result = export_small(
        tmp_path,
        real_welds_dir,
        fmt="int8",
        n=16,
        borderline=photos,
        overrides=("export.min_int8_agreement=1.0", "export.int8_float_layers=[0,1000]"),
    )
    q = result.report["int8"]
    assert [(r["float_layers"], r["passed"]) for r in q["search"]] == [(0, False), (1000, True)]
    assert q["search"][0]["agreement"] < 1.0 and q["float_layers"] == 1000
    assert q["gate"]["n_images"] == len(photos) - 16 and q["gate"]["agreement"] == 1.0  # every uncalibrated photo
    side = json.loads(result.path.with_suffix(".json").read_text())
    assert side["precision"] == "int8" and side["checks"]["gate"]["passed"] and len(side["checks"]["search"]) == 2


def test_int8_gate_never_checks_a_calibration_image(procedural_dir: Path, tmp_path: Path) -> None:
    from weldray.config import load_config
    from weldray.data.layout import image_files
    from weldray.export.images import select_check_images

    for extra in ([], ["export.int8_check_images=5"]):
        cfg = load_config([f"export.check_images={procedural_dir}", "export.calibration_images=8", *extra])
        images = select_check_images(cfg)
        assert len(images.calibration) == 8 and not set(images.gate) & set(images.calibration)
        n_all = len(image_files(str(procedural_dir), cfg.data))
        assert len(images.gate) == (5 if extra else n_all - 8)


def test_tensorrt_needs_gpu(tmp_path: Path, procedural_dir: Path) -> None:
    from weldray.export import TensorRTUnavailableError, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailableError as exc:
        assert "needs an NVIDIA GPU with TensorRT" in str(exc)
        with pytest.raises(TensorRTUnavailableError):
            export_small(tmp_path, procedural_dir, fmt="tensorrt", n=4)
        assert not (tmp_path / "onnx").exists()  # refused before doing any work
        return
    pytest.skip("a GPU with TensorRT is present: covered by test_tensorrt_engine_parity")


@pytest.mark.gpu
@pytest.mark.slow
def test_tensorrt_engine_parity(tmp_path: Path, procedural_dir: Path) -> None:
    from weldray.export import TensorRTUnavailableError, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailableError as exc:
        pytest.skip(str(exc))
    result = export_small(tmp_path, procedural_dir, fmt="tensorrt", n=8)
    assert result.report["tensorrt"]["vs_fp32"]["argmax_agreement"] == 1.0
    from weldray.inference import WeldClassifierInference

    assert WeldClassifierInference(result.path, providers="tensorrt").provider == "TensorrtExecutionProvider"


def test_export_cli_int8_prints_the_search_and_the_path(tmp_path: Path, procedural_dir: Path) -> None:
    from typer.testing import CliRunner

    from weldray.cli import app

    ckpt = make_checkpoint(tmp_path / "run" / "model.pt")
    out = tmp_path / "onnx" / "m.onnx"
    result = CliRunner().invoke(
        app,
        ["export", str(ckpt.parent), "--format", "int8", "-o", str(out), f"export.check_images={procedural_dir}",
         "export.parity_images=4", "export.calibration_images=8", "export.min_int8_agreement=0.5",
         "export.int8_float_layers=[0]", f"output_dir={tmp_path / 'outputs'}"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out.with_name("m.int8.onnx"))
    assert "photos not calibrated on" in result.stderr and "0 float layers, minmax" in result.stderr
