"""Model export (``export.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from weldray.config._base import ConfigError, check_choice, check_positive

FORMATS = ("onnx", "int8", "tensorrt")
TENSORRT_PRECISIONS = ("fp16", "int8")
CALIBRATIONS = ("minmax", "percentile", "entropy")


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
    # The INT8 search (`weldray export --format int8`): candidates, cheapest first, are the counts of leading
    # Conv/MatMul/Gemm layers (stem, first blocks: the most quantisation-sensitive) kept in float, each tried
    # with every calibration method in turn; the first candidate that passes the agreement gate is kept. More
    # float layers never make a model faster, so that is the fastest passing one. Trained efficientnet_lite0,
    # agreement with fp32 on the 263 real photos: 0 -> 96.2 %, 4 -> 98.9 %, 8 and 12 -> 100 %.
    int8_float_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16, 24, 32])
    # minmax | percentile | entropy (percentile and entropy calibrate 3-5x slower).
    int8_calibration: list[str] = field(default_factory=lambda: ["minmax"])
    # Images the INT8 gate checks, none of them used for calibration; None = every such image available
    # (at 99 % a gate on 32 images allows no disagreement at all and proves little).
    int8_check_images: int | None = None
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
        if not self.int8_float_layers or any(n < 0 for n in self.int8_float_layers):
            raise ConfigError(
                "export.int8_float_layers", f"must be a non-empty list of counts >= 0, got {self.int8_float_layers}"
            )
        if self.int8_float_layers != sorted(set(self.int8_float_layers)):
            raise ConfigError(
                "export.int8_float_layers",
                f"must be strictly increasing (cheapest first), got {self.int8_float_layers}",
            )
        if not self.int8_calibration:
            raise ConfigError("export.int8_calibration", "must name at least one calibration method")
        for method in self.int8_calibration:
            check_choice("export.int8_calibration", method, CALIBRATIONS)
        if self.int8_check_images is not None:
            check_positive("export.int8_check_images", self.int8_check_images)
        for key in ("min_agreement", "min_int8_agreement"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"export.{key}", f"must be in (0, 1], got {value}")
        check_choice("export.tensorrt_precision", self.tensorrt_precision, TENSORRT_PRECISIONS)
        check_positive("export.tensorrt_max_batch", self.tensorrt_max_batch)
