"""Static INT8 quantisation (QDQ, per-channel) with ONNX Runtime, calibrated on real images.

Choices, each measured on this project's models (docs/export_and_serving.md, figures in docs/measurements.md):

- **uint8 activations, int8 weights (U8S8)**: ONNX Runtime's x86 int8 kernels (AVX512-VNNI /
  AVX2) take unsigned activations; with int8 activations (S8S8) the fused int8 paths are not
  taken and the model ran ~1.7x slower (efficientnet_lite0: 7.7 vs 4.6 ms CPU per image).
- **leading layers kept in float** (``Int8Setting.float_layers``): the stem and first blocks work at
  the highest resolution with few channels, and their rounding error is carried through the whole
  network. Keeping the first 12 Conv layers of the trained efficientnet_lite0 in float raised
  argmax agreement with fp32 on the 263 real photos from 96.2 % to 100 % for little speed
  (5.6 vs 4.6 ms CPU per image all-int8; fp32 9.4 ms). How many a model needs differs per trained
  model, so ``weldray export`` searches it (:mod:`weldray.export.pipeline`).
- **MinMax calibration** first: Entropy and Percentile gave no better agreement on that model, at
  3-5x the time; the search can try them too (``export.int8_calibration``).

Dynamic quantisation is deliberately not offered: on these conv nets it is 4-5x slower than fp32
on CPU, because it quantises activations at run time for every layer.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: The layers counted by ``float_layers``. The quantiser's default op list is kept otherwise: it
#: also quantises Clip/Relu (a ReLU6 is then folded into its convolution's uint8 range [0, 6],
#: instead of the convolution's much wider raw range) and residual Adds. Restricting it to these
#: ops alone lost agreement (97.3 % vs 100 %) and speed (5.9 vs 5.3 ms) on the trained lite0.
LAYER_OPS = ("Conv", "MatMul", "Gemm")


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


def leading_layers(model_path: str | Path, n: int) -> list[str]:
    """Names of every node within the first ``n`` quantisable layers from the input: a node's depth is the
    most layers on any path from the input to it (itself included), and every node of depth <= ``n`` runs in
    float, its activations too; the model is quantised from there on (``n`` past the deepest layer: nothing
    is quantised). On a chain of layers this is the prefix of the network up to the ``n``-th layer and its
    activation; on an ensemble graph it is that prefix of every member, not of the first one only."""
    import onnx

    if n <= 0:
        return []
    depth_of: dict[str, int] = {}  # tensor name -> depth of the node that produced it (graph inputs: 0)
    keep = []
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:  # topological order
        depth = max((depth_of.get(t, 0) for t in node.input if t), default=0) + (node.op_type in LAYER_OPS)
        for t in node.output:
            depth_of[t] = depth
        if depth <= n:
            keep.append(node.name)
    return keep


#: ``export.int8_calibration`` names -> ONNX Runtime calibration methods.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Int8Setting:
    """One point of the INT8 search: how many leading layers stay float, and how activations are calibrated."""

    float_layers: int
    calibration: str = "minmax"

    @property
    def label(self) -> str:
        return f"{self.float_layers} float layers, {self.calibration}"


def preprocess(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ONNX Runtime's pre-quantisation pass (done once per search, shared by every candidate)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference chokes on the dynamo graph; ONNX shape inference is enough.
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return Path(out_path)


def quantize_int8(
    preprocessed: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    setting: Int8Setting,
    *,
    input_name: str = "input",
    batch_size: int = 8,
) -> Path:
    """Write a static INT8 QDQ model (U8S8, per-channel weights) of the :func:`preprocess`-ed model to
    ``out_path``, with the first ``setting.float_layers`` quantisable layers left in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[setting.calibration]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    keep_float = leading_layers(preprocessed, setting.float_layers)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # the quantiser logs one INFO line per rescaled bias
        try:
            quantize_static(
                str(preprocessed),
                str(staged),
                _reader(calibration, input_name, batch_size),
                quant_format=QuantFormat.QDQ,
                nodes_to_exclude=keep_float,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )
        finally:
            root.setLevel(level)
        staged.replace(out_path)
    log.debug("INT8 model (%d calibration images, %s) written to %s", len(calibration), setting.label, out_path)
    return out_path
