"""Export trained weld classifiers: ONNX (opset 18, dynamic batch), static INT8, TensorRT (GPU).

Every export is checked on real images against its reference before it is kept.
"""

from weldray.export.images import CheckImages, NoCheckImagesError, select_check_images
from weldray.export.parity import Agreement, compare
from weldray.export.pipeline import ExportResult, ParityError, artefact_paths, export_checkpoint, export_format
from weldray.export.tensorrt import TensorRTUnavailableError, require_tensorrt

__all__ = [
    "Agreement",
    "CheckImages",
    "ExportResult",
    "NoCheckImagesError",
    "ParityError",
    "TensorRTUnavailableError",
    "artefact_paths",
    "compare",
    "export_checkpoint",
    "export_format",
    "require_tensorrt",
    "select_check_images",
]
