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
    with pytest.raises(CorruptImageError):
        clf.predict(b"\xff\xd8\xff" + b"\x00" * 100)
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
