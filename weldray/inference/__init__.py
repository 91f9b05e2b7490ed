"""Inference on exported weld classifiers: the Python API and the Ray Serve HTTP app.

Imports stay light (no torch): Serve replicas load only ONNX Runtime.
"""

from weldray.inference.classifier import WeldClassifierInference, softmax
from weldray.inference.providers import ProviderError, create_session, resolve_provider
from weldray.inference.sidecar import ModelSidecar, read_sidecar, sidecar_path, write_sidecar

__all__ = [
    "ModelSidecar",
    "ProviderError",
    "WeldClassifierInference",
    "create_session",
    "read_sidecar",
    "resolve_provider",
    "sidecar_path",
    "softmax",
    "write_sidecar",
]
