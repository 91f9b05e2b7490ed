"""``WeldClassifierInference`` on every input type, batching, TTA, review flag and provider checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.export.models import CLASSES, export_small


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, procedural_dir: Path) -> Path:
    return export_small(tmp_path_factory.mktemp("infer"), procedural_dir, n=4).path


@pytest.fixture(scope="module")
def photo(procedural_dir: Path) -> Path:
    return sorted((procedural_dir / "bad_welds").glob("*.jpg"))[0]


def test_every_input_type_gives_the_same_answer(model_path: Path, photo: Path) -> None:
    from weldray.inference import WeldClassifierInference

    clf = WeldClassifierInference(model_path, providers="cpu")
    pil = Image.open(photo)
    inputs = {
        "path": photo,
        "str": str(photo),
        "bytes": photo.read_bytes(),
        "pil": pil,
        "ndarray": np.asarray(pil.convert("RGB")),
        "float_ndarray": np.asarray(pil.convert("RGB")) / 255.0,
    }
    results = {k: clf.predict(v) for k, v in inputs.items()}
    ref = results["path"]
    assert ref["class"] in CLASSES and set(ref) >= {"class", "confidence", "probabilities", "needs_review"}
    assert sum(ref["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    for kind, res in results.items():
        assert res["class"] == ref["class"], kind
        tol = 5e-3 if kind == "float_ndarray" else 1e-6  # float input is re-quantised to 8 bits
        for name in CLASSES:
            assert res["probabilities"][name] == pytest.approx(ref["probabilities"][name], abs=tol), kind


def test_batch_equals_single_and_handles_odd_modes(model_path: Path, photo: Path) -> None:
    from weldray.inference import WeldClassifierInference

    clf = WeldClassifierInference(model_path, providers="cpu")
    rgb = Image.open(photo).convert("RGB")
    buf = io.BytesIO()
    rgb.convert("CMYK").save(buf, "JPEG")
    images = [
        photo,
        rgb.convert("L"),
        rgb.convert("RGBA"),
        buf.getvalue(),
        np.asarray(rgb.convert("L"), np.uint16) * 257,
    ]
    batch = clf.predict_batch(images)
    assert len(batch) == len(images)
    for img, res in zip(images, batch, strict=True):
        single = clf.predict(img)
        assert res["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    assert clf.predict_batch([]) == []


def test_review_band_and_tta(model_path: Path, photo: Path) -> None:
    from weldray.inference import WeldClassifierInference

    strict = WeldClassifierInference(model_path, providers="cpu", review_threshold=1.0).predict(photo)
    lax = WeldClassifierInference(model_path, providers="cpu", review_threshold=0.5).predict(photo)
    assert strict["needs_review"] is True and lax["needs_review"] is False
    plain = WeldClassifierInference(model_path, providers="cpu")
    tta = WeldClassifierInference(model_path, providers="cpu", tta=True)
    x = plain.prepare(photo)[None]
    expected = (plain.probabilities(x) + plain.probabilities(x[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(tta.probabilities(x), expected, atol=1e-6)


def test_bad_input_and_missing_pieces_are_clear_errors(model_path: Path, tmp_path: Path) -> None:
    from weldray.inference import ProviderError, WeldClassifierInference
    from weldray.preprocessing import CorruptImageError, EmptyImageError, UnsupportedFormatError

    clf = WeldClassifierInference(model_path, providers="cpu")
    assert clf.metadata["provider"] == "CPUExecutionProvider"
    with pytest.raises(EmptyImageError):
        clf.predict(b"")
    with pytest.raises(UnsupportedFormatError):
        clf.predict(b"plain text")
    with pytest.raises(CorruptImageError, match="corrupt JPEG data: cannot identify image file$"):
        clf.predict(b"\xff\xd8\xff" + b"\x00" * 100)  # no internal object repr in the reason a client reads
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
            WeldClassifierInference(model_path, providers="cuda")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(model_path.read_bytes())
    with pytest.raises(FileNotFoundError, match="sidecar"):
        WeldClassifierInference(lonely)


def test_predict_cli_prints_json_lines(model_path: Path, photo: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from weldray.cli import app

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\x00")
    out = CliRunner().invoke(app, ["predict", str(model_path), str(photo), str(bad), "serve.provider=cpu"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert lines[0]["image"] == str(photo) and lines[0]["class"] in CLASSES
    assert lines[1]["error"] == "corrupt"


def test_predict_batch_runs_in_chunks_with_flat_memory(model_path: Path, procedural_dir: Path) -> None:
    """Any number of images: results equal per-image predictions, and the memory held at once is one
    chunk's, not the whole list's (a lazy iterable is read as it goes)."""
    import tracemalloc

    from weldray.inference import WeldClassifierInference

    clf = WeldClassifierInference(model_path, providers="cpu")
    photos = sorted(procedural_dir.glob("*/*.jpg"))[:10]
    chunked = clf.predict_batch(photos, batch_size=4)  # chunks of 4, 4 and 2
    for photo, res in zip(photos, chunked, strict=True):
        assert res["probabilities"] == pytest.approx(clf.predict(photo)["probabilities"], abs=1e-5)

    def peak(n: int) -> int:
        images = (np.full((400, 400, 3), i % 255, np.uint8) for i in range(n))  # 0.5 MB each, made on demand
        tracemalloc.start()
        try:
            assert sum(1 for _ in clf.iter_predict(images, batch_size=4)) == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(64) < 1.5 * peak(8)  # 8x the images, not 8x the memory
    with pytest.raises(ValueError, match="batch_size"):
        clf.predict_batch(photos, batch_size=0)


def test_iter_predict_can_report_bad_images_in_place(model_path: Path, photo: Path) -> None:
    from weldray.inference import WeldClassifierInference

    clf = WeldClassifierInference(model_path, providers="cpu")
    out = list(clf.iter_predict([photo, b"plain text", photo], batch_size=2, skip_errors=True))
    assert out[0]["class"] in CLASSES and out[2] == out[0]
    assert out[1]["error"] == "unsupported_format" and "reason" in out[1]


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory, procedural_dir: Path) -> Path:
    """An export with fp32 and INT8 models (the gate relaxed: untrained weights are near ties)."""
    result = export_small(
        tmp_path_factory.mktemp("int8"), procedural_dir, fmt="int8", n=4,
        overrides=("export.min_int8_agreement=0.5", "export.int8_float_layers=[0]"),
    )
    return Path(result.artefacts["onnx"])


def _set_gate(fp32: Path, **gate: object) -> None:
    import json

    side = fp32.with_name(fp32.stem + ".int8.json")
    data = json.loads(side.read_text())
    data["checks"]["gate"].update(gate)
    side.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("precision", "gate", "expected", "why"),
    [
        ("auto", {"passed": True, "faster_than_fp32": True}, "int8", "passed its agreement gate"),
        ("auto", {"passed": True, "faster_than_fp32": False}, "fp32", "not faster than fp32"),
        ("auto", {"passed": False, "faster_than_fp32": True}, "fp32", "did not pass"),
        ("fp32", {"passed": True, "faster_than_fp32": True}, "fp32", "fp32 requested"),
        ("int8", {"passed": True, "faster_than_fp32": True}, "int8", "int8 requested"),
        ("int8", {"passed": True, "faster_than_fp32": False}, "int8", "int8 requested"),  # asked: the gate is enough
    ],
)
def test_precision_picks_the_int8_model_only_when_its_gate_allows(
    int8_export: Path, precision: str, gate: dict, expected: str, why: str
) -> None:
    from weldray.inference import WeldClassifierInference

    _set_gate(int8_export, **gate)
    clf = WeldClassifierInference(int8_export, providers="cpu", precision=precision)
    assert clf.metadata["precision"] == expected and why in clf.metadata["precision_choice"]
    assert clf.model_path.endswith(".int8.onnx") == (expected == "int8")


def test_precision_int8_without_a_passing_int8_model_is_a_clear_error(int8_export: Path, model_path: Path) -> None:
    from weldray.inference import WeldClassifierInference

    _set_gate(int8_export, passed=False)
    with pytest.raises(FileNotFoundError, match="no INT8 model that passed"):
        WeldClassifierInference(int8_export, providers="cpu", precision="int8")
    # An export without INT8: auto serves fp32 and says why.
    clf = WeldClassifierInference(model_path, providers="cpu", precision="auto")
    assert clf.metadata["precision"] == "fp32" and "no INT8 model exported" in clf.metadata["precision_choice"]


def test_predict_cli_reads_folders_with_progress(model_path: Path, procedural_dir: Path) -> None:
    import json

    from typer.testing import CliRunner

    from weldray.cli import app

    out = CliRunner().invoke(
        app, ["predict", str(model_path), str(procedural_dir), "--batch-size", "4", "serve.provider=cpu"]
    )
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    n = len(list(procedural_dir.glob("*_welds/*.jpg")))
    assert len(lines) == n and all(line["class"] in CLASSES for line in lines)
    assert "predicting" in out.stderr


def test_explain_gives_a_heatmap_at_the_photo_size(model_path: Path, photo: Path) -> None:
    """The exported graph's class maps average to its logits; the heatmap covers the whole photo."""
    from weldray.inference import WeldClassifierInference

    clf = WeldClassifierInference(model_path, providers="cpu")
    assert clf.sidecar.maps_output == "class_maps"
    x = np.ascontiguousarray(clf.prepare(photo)[None].transpose(0, 3, 1, 2), dtype=np.float32)
    logits, maps = clf._session.run(["logits", "class_maps"], {"input": x})
    np.testing.assert_allclose(maps.mean((2, 3)), logits, atol=1e-4)

    result, heat, picture = clf.explain(photo)
    assert heat.shape == (picture.height, picture.width) == Image.open(photo).size[::-1]
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert result["class"] == clf.predict(photo)["class"]
    x_peak, y_peak = result["peak_xy"]
    assert heat[y_peak, x_peak] == heat.max()


def test_predict_cli_explain_writes_overlays(model_path: Path, photo: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from weldray.cli import app

    out = CliRunner().invoke(
        app, ["predict", str(model_path), str(photo), "--explain", str(tmp_path / "why"), "serve.provider=cpu"]
    )
    assert out.exit_code == 0, out.output
    line = json.loads(out.stdout.strip().splitlines()[-1])
    overlay = Image.open(line["explanation"])
    assert overlay.size == Image.open(photo).size and line["class"] in line["explanation"]


def test_predict_cli_refuses_decompression_bombs(model_path: Path, photo: Path, tmp_path: Path) -> None:
    """`weldray predict` on bombs in every accepted format: one too_large line each (the photo beside them is
    still classified), in seconds, not the minutes and gigabytes of decoding them."""
    import json
    import time

    from typer.testing import CliRunner

    from tests.bombs import BOMB_FORMATS, bomb
    from weldray.cli import app

    bombs = []
    for fmt in BOMB_FORMATS:
        bombs.append(tmp_path / f"bomb.{fmt.lower()}")
        bombs[-1].write_bytes(bomb(fmt, 16000, 16000))
    started = time.perf_counter()
    out = CliRunner().invoke(app, ["predict", str(model_path), *map(str, bombs), str(photo), "serve.provider=cpu"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    for path, line in zip(bombs, lines, strict=False):
        assert line["image"] == str(path) and line["error"] == "too_large", line
        assert "declares 256000000 pixels" in line["reason"] and "refused before decoding" in line["reason"]
    assert lines[-1]["class"] in CLASSES
    assert time.perf_counter() - started < 30
    only_bombs = CliRunner().invoke(app, ["predict", str(model_path), *map(str, bombs), "serve.provider=cpu"])
    assert only_bombs.exit_code == 1  # nothing classified: a non-zero exit
