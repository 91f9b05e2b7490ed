"""Execution-provider selection for ONNX Runtime, with no silent fallback.

ONNX Runtime quietly runs on CPU when a GPU provider fails to load; weldray instead checks the
session's active providers and raises :class:`ProviderError` when the requested one is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class ProviderError(RuntimeError):
    """The requested execution provider is not available or did not load."""


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch missing or a broken CUDA install: no usable GPU
        return 0


def resolve_provider(name: str | Sequence[str] | None) -> str:
    """One ONNX Runtime provider name from ``auto``/``cpu``/``cuda``/``tensorrt`` or a full name.

    ``auto`` picks TensorRT, then CUDA, when ONNX Runtime offers them and a GPU is visible; else CPU.
    """
    import onnxruntime as ort

    if name is None:
        name = "auto"
    if not isinstance(name, str):
        names = list(name)
        if not names:
            raise ProviderError("providers must name at least one execution provider")
        name = names[0]
    available = ort.get_available_providers()
    if name == "auto":
        gpu_providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if gpu_providers and _gpu_count() > 0:  # only ask torch/CUDA when ONNX Runtime could use a GPU
            return gpu_providers[0]
        return "CPUExecutionProvider"
    full = ALIASES.get(name.lower(), name)
    if full not in available:
        hint = ""
        if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            hint = (
                " (needs an NVIDIA GPU with onnxruntime-gpu"
                + (" and TensorRT" if "Tensorrt" in full else "")
                + " installed instead of onnxruntime: pip install 'weldray[gpu]')"
            )
        raise ProviderError(
            f"execution provider {full} is not available; ONNX Runtime offers {available}{hint}"
        )
    return full


def create_session(
    model: str | bytes,
    provider: str,
    *,
    provider_options: dict[str, Any] | None = None,
    intra_op_threads: int = 0,
    allow_spinning: bool = True,
) -> Any:
    """An InferenceSession on exactly ``provider``; raises ProviderError when it did not load.

    All graph optimisations (constant folding, Conv+BN/activation fusion, NCHWc layouts on CPU,
    QDQ -> int8 kernel fusion), sequential execution (these graphs are chains: parallelism
    comes from the intra-op pool). ``intra_op_threads`` 0 = one per physical core.
    ``allow_spinning=False`` makes idle pool threads sleep instead of spin: slower by a few
    percent on an idle machine, much faster when the cores are shared (an HTTP server's decode
    threads, other processes).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = [(provider, provider_options or {})]
    if provider != "CPUExecutionProvider":
        # Nodes a GPU provider cannot take run on CPU inside the same session; the check below still
        # fails when the GPU provider itself did not load.
        providers.append("CPUExecutionProvider")
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:
        raise ProviderError(f"could not create an ONNX Runtime session on {provider}: {exc}") from exc
    active = session.get_providers()
    if provider not in active:
        raise ProviderError(f"requested {provider} but ONNX Runtime loaded {active}; refusing to fall back")
    log.info("ONNX Runtime session on %s (active providers: %s)", provider, active)
    return session
