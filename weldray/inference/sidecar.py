"""The JSON sidecar written next to every exported model: everything a consumer needs to feed it.

The ONNX graph takes float32 NCHW raw RGB in [0, 255] (normalisation is inside the graph), so the
sidecar only records what cannot live in the graph: class names, input size, the resize policy,
the softmax temperature and where the model came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
PRECISIONS = ("auto", "fp32", "int8")
#: ``weldray export`` writes the INT8 model beside the fp32 one: ``x.onnx`` -> ``x.int8.onnx``.
INT8_SUFFIX = ".int8.onnx"

#: How :func:`weldray.preprocessing.prepare` builds the model input; recorded for non-Python consumers.
PREPROCESSING: dict[str, Any] = {
    "decode": "8-bit RGB (grayscale/16-bit/CMYK converted, alpha on white, EXIF orientation applied)",
    "resize": "whole image squashed to input_size x input_size, bilinear, no crop",
    "layout": "NCHW",
    "dtype": "float32",
    "range": [0.0, 255.0],
    "normalization": "inside the model graph",
}


@dataclass
class ModelSidecar:
    classes: list[str]
    input_size: int
    temperature: float = 1.0
    input_name: str = "input"
    output_name: str = "logits"
    # Second output: class activation maps [B, C, h, w] whose spatial mean is the logits ("" = none).
    maps_output: str = ""
    precision: str = "fp32"
    backbone: str = ""
    run_id: str = ""
    manifest_sha256: str = ""
    source_checkpoint: str = ""
    opset: int = 18
    created: str = ""
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(PREPROCESSING))
    # Parity / agreement figures measured at export time (see weldray.export).
    checks: dict[str, Any] = field(default_factory=dict)
    # Ensemble members (source, run id, temperature): the graph averages their calibrated probabilities.
    members: list[dict[str, Any]] = field(default_factory=list)
    # Execution-provider options the artefact was built for (TensorRT engine cache, profile shapes).
    provider_options: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSidecar:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        missing = {"classes", "input_size"} - known.keys()
        if missing:
            raise ValueError(f"model sidecar lacks {sorted(missing)}")
        return cls(**known)


def sidecar_path(model_path: str | Path) -> str:
    """``models/x.onnx`` -> ``models/x.json`` (works for local paths and s3:// URIs)."""
    text = str(model_path)
    stem = text.rsplit(".", 1)[0] if text.rsplit("/", 1)[-1].count(".") else text
    return stem + ".json"


def write_sidecar(model_path: str | Path, sidecar: ModelSidecar) -> Path:
    path = Path(sidecar_path(model_path))
    path.write_text(sidecar.to_json() + "\n")
    return path


def read_sidecar(model_path: str | Path) -> ModelSidecar:
    """The sidecar of ``model_path``; a clear error when it is missing."""
    from weldray.io import exists, read_bytes

    path = sidecar_path(model_path)
    if not exists(path):
        raise FileNotFoundError(
            f"model sidecar {path} not found: it is written by `weldray export` next to the ONNX file "
            "and holds the class names, input size and temperature"
        )
    return ModelSidecar.from_dict(json.loads(read_bytes(path)))


def int8_path(fp32_path: str) -> str:
    """The INT8 artefact ``weldray export --format int8`` writes beside the fp32 model ``fp32_path``."""
    return fp32_path.removesuffix(".onnx") + INT8_SUFFIX


def int8_passed(sidecar: ModelSidecar) -> bool:
    """The INT8 model passed the export's agreement gate on images it was not calibrated on (sidecars written
    before the gate's record existed do not count)."""
    return sidecar.precision == "int8" and bool(sidecar.checks.get("gate", {}).get("passed"))


def int8_faster(sidecar: ModelSidecar) -> bool:
    """The INT8 model ran faster than its fp32 parent at export time (what ``auto`` also asks of it)."""
    return bool(sidecar.checks.get("gate", {}).get("faster_than_fp32"))


def choose_precision(model_path: str, precision: str, cpu: bool) -> tuple[str, str]:
    """The model file to load for ``precision`` (auto | fp32 | int8) and why: ``auto`` takes the export's
    INT8 model on CPU when it passed its gate (:func:`int8_passed`) and was faster (:func:`int8_faster`), else the
    fp32 model; ``int8`` needs only the gate. ``model_path``
    may name either artefact of an export."""
    from weldray.io import exists

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    given = read_sidecar(model_path)
    if given.precision not in ("fp32", "int8"):  # TensorRT artefacts: served as built
        return model_path, f"{given.precision} model as given"
    fp32 = model_path.removesuffix(INT8_SUFFIX) + ".onnx" if given.precision == "int8" else model_path
    int8 = int8_path(fp32)
    if precision == "fp32":
        if not exists(fp32):
            raise FileNotFoundError(f"precision fp32: the fp32 model {fp32} of {model_path} is missing")
        return fp32, "fp32 requested"
    if given.precision == "int8":
        return model_path, "INT8 model as given"
    has_int8 = exists(int8) and exists(sidecar_path(int8))
    int8_sidecar = read_sidecar(int8) if has_int8 else None
    passed = int8_sidecar is not None and int8_passed(int8_sidecar)
    if precision == "int8":
        if not passed:
            raise FileNotFoundError(
                f"precision int8: no INT8 model that passed the export's agreement gate beside {model_path} "
                f"(expected {int8}; make it with `weldray export RUN --format int8`)"
            )
        return int8, "int8 requested"
    if not cpu:
        return fp32, "auto: fp32 on a GPU provider"
    if passed and int8_faster(int8_sidecar):
        return int8, "auto: the export's INT8 model passed its agreement gate and was faster than fp32"
    if passed:
        return fp32, "auto: the INT8 model passed its gate but was not faster than fp32 at export"
    return fp32, "auto: " + ("the INT8 model did not pass its gate" if has_int8 else "no INT8 model exported")
