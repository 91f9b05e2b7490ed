"""Model export (``export.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from weldray.config._base import ConfigError, check_choice, check_positive

FORMATS = ("onnx", "int8", "tensorrt")
TENSORRT_PRECISIONS = ("fp16", "int8")


@dataclass
class ExportConfig:
    format: str = "onnx"
    # The fp32 ONNX file; INT8 and TensorRT artefacts are written beside it.
    output: str = "models/onnx/weld_classifier.onnx"
    opset: int = 20
    # Real images for the parity check and INT8 calibration: a class-folder tree or a manifest.parquet.
    # None: the run's dataset manifest when it can be found, else data.root.
    check_images: str | None = None
    # Images used for the parity check and INT8 calibration.
    parity_images: int = 32
    calibration_images: int = 64
    # Argmax agreement below this fails the export (torch vs ONNX fp32, and fp32 vs TensorRT).
    min_agreement: float = 1.0
    # Argmax agreement of the INT8 model with fp32 below this fails the INT8 export.
    min_int8_agreement: float = 0.99
    # Leading Conv/MatMul/Gemm layers (stem, first blocks) kept in float in the INT8 model: they are
    # the most quantisation-sensitive. Trained efficientnet_lite0, argmax agreement with fp32 on the
    # 263 real photos: 0 -> 96.2 %, 4 -> 98.9 %, 8 -> 100 % (but 31/32 on the run's own held-out
    # images), 12 -> 100 % on both. Raise it when the INT8 check fails.
    int8_float_layers: int = 12
    # TensorRT engine precision (fp16, or int8 built from the calibrated QDQ model).
    tensorrt_precision: str = "fp16"
    # Largest batch the TensorRT optimisation profile accepts.
    tensorrt_max_batch: int = 32

    def __post_init__(self) -> None:
        check_choice("export.format", self.format, FORMATS)
        if self.opset < 17:
            raise ConfigError("export.opset", f"must be >= 17, got {self.opset}")
        check_positive("export.parity_images", self.parity_images)
        check_positive("export.calibration_images", self.calibration_images)
        check_positive("export.int8_float_layers", self.int8_float_layers, allow_zero=True)
        for key in ("min_agreement", "min_int8_agreement"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"export.{key}", f"must be in (0, 1], got {value}")
        check_choice("export.tensorrt_precision", self.tensorrt_precision, TENSORRT_PRECISIONS)
        check_positive("export.tensorrt_max_batch", self.tensorrt_max_batch)
