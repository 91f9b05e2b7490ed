"""TensorRT engines through ONNX Runtime's TensorRT execution provider (NVIDIA GPUs only).

The engine is built once at export time into an engine cache beside the model; serving the same
ONNX file with ``providers="tensorrt"`` reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NEEDS = "needs an NVIDIA GPU with TensorRT"


class TensorRTUnavailableError(RuntimeError):
    """TensorRT cannot run on this machine."""


def require_tensorrt() -> None:
    """Raise with the precise missing piece unless a GPU and ORT's TensorRT provider are present."""
    import onnxruntime as ort

    from weldray.inference.providers import _gpu_count

    if _gpu_count() == 0:
        raise TensorRTUnavailableError(f"TensorRT export {NEEDS}: no CUDA GPU is visible on this machine")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise TensorRTUnavailableError(
            f"TensorRT export {NEEDS}: ONNX Runtime offers {ort.get_available_providers()}; install "
            "onnxruntime-gpu and TensorRT 10 (pip install 'weldray[gpu]') in place of onnxruntime"
        )


def tensorrt_options(
    cache_dir: str, image_size: int, precision: str, max_batch: int, input_name: str = "input"
) -> dict[str, Any]:
    """Provider options: an engine cache and one optimisation profile covering batch 1..max_batch."""
    shape = f"3x{image_size}x{image_size}"
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache_dir,
        "trt_timing_cache_enable": True,
        "trt_fp16_enable": precision == "fp16",
        # INT8 engines are built from the QDQ model's explicit scales: no TensorRT calibrator needed.
        "trt_int8_enable": precision == "int8",
        "trt_profile_min_shapes": f"{input_name}:1x{shape}",
        "trt_profile_opt_shapes": f"{input_name}:{max(1, max_batch // 2)}x{shape}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{shape}",
    }


def build_engine(onnx_path: str | Path, options: dict[str, Any], cache_dir: Path):
    """Build (or reuse) the engine and return the TensorRT-backed session."""
    from weldray.inference.providers import create_session

    require_tensorrt()
    cache_dir.mkdir(parents=True, exist_ok=True)
    opts = dict(options, trt_engine_cache_path=str(cache_dir))
    session = create_session(str(onnx_path), "TensorrtExecutionProvider", provider_options=opts)
    log.info("TensorRT engine cache at %s", cache_dir)
    return session
