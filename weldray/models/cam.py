"""Class activation maps that decompose the classifier's logits exactly.

Everything after the backbone's last feature map is affine per image: global average pooling, the
ConvNeXt head's LayerNorm of the pooled vector (its mean and variance are one number per image), the
embedding's Linear + BatchNorm1d (eval), and the head (a cosine head divides by the pooled embedding's
norm, again one number per image; a linear head adds its bias). Applying those steps at every location
of the feature map instead of to its mean gives maps ``[B, C, h, w]`` whose spatial mean *is* the logit
of each class: the map shows where the evidence for the decision lies, with no gradients, and it
exports to ONNX as a second output so serving needs no PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weldray.models.heads import LinearHead, MarginHead

CLASS_MAPS_OUTPUT = "class_maps"


def class_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, C], maps [B, C, h, w])`` of a :class:`~weldray.models.WeldClassifier` in eval mode, with
    ``maps.mean((2, 3)) == logits`` (up to rounding)."""
    if model.training:
        raise ValueError("class maps decompose the eval-mode network: call model.eval() first")
    backbone = model.backbone
    feats = backbone.forward_features((x - model.mean) / model.std)  # [B, F, h, w]
    pooled = feats.mean((2, 3), keepdim=True)
    norm = getattr(getattr(backbone, "head", None), "norm", None)
    if isinstance(norm, nn.LayerNorm):  # timm LayerNorm2d (ConvNeXt's head): statistics of the pooled vector
        mu = pooled.mean(1, keepdim=True)
        var = pooled.var(1, unbiased=False, keepdim=True)
        feats = (feats - mu) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(
            1, -1, 1, 1
        )
    linear, bn = model.embedding
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    emb = torch.einsum("bfhw,ef->behw", feats, linear.weight) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    head = model.head
    if isinstance(head, MarginHead):
        pooled_emb = emb.mean((2, 3))
        denom = pooled_emb.norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        maps = head.scale * torch.einsum("behw,ce->bchw", emb, F.normalize(head.weight, dim=1)) / denom
    elif isinstance(head, LinearHead):
        maps = torch.einsum("behw,ce->bchw", emb, head.fc.weight) + head.fc.bias.view(1, -1, 1, 1)
    else:
        raise TypeError(f"no class maps for head {type(head).__name__}")
    return maps.mean((2, 3)), maps


class WithClassMaps(nn.Module):
    """Export wrapper: ``forward(x)`` -> ``(logits, class_maps)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return class_maps(self.model, x)
