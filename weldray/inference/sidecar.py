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
