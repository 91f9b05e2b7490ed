"""Static INT8 quantisation (QDQ, per-channel) with ONNX Runtime, calibrated on real images.

Dynamic quantisation is deliberately not offered: on these conv nets it is 4-5x slower than fp32
on CPU, because it quantises activations at run time for every layer.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _reader(x: np.ndarray, input_name: str, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageCalibrationReader(CalibrationDataReader):
        """Feeds preprocessed real images (float32 NCHW raw RGB) in small batches."""

        def __init__(self) -> None:
            self._batches = iter([x[i : i + batch_size] for i in range(0, len(x), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return ImageCalibrationReader()


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    input_name: str = "input",
    batch_size: int = 8,
) -> Path:
    """Write a static INT8 QDQ model (per-channel weights, MinMax activations) to ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference chokes on the dynamo graph; ONNX shape inference is enough.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(staged),
            _reader(calibration, input_name, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        staged.replace(out_path)
    log.info("INT8 model (%d calibration images) written to %s", len(calibration), out_path)
    return out_path
