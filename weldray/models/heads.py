"""Classification heads: ArcFace, CosFace and plain softmax.

Margin heads compare an L2-normalised embedding with L2-normalised class centres, so logits are
``s * cos(theta)``. In training the target logit gets a margin (ArcFace: ``cos(theta + m)``,
CosFace: ``cos(theta) - m``), which forces tighter classes; at inference no margin is applied,
so the exported graph is just a normalised matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _target_weights(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-class margin weights: one-hot for hard labels, the soft label itself for MixUp/CutMix targets."""
    if target.ndim == 1:
        return F.one_hot(target.long(), num_classes).to(dtype)
    if target.shape[-1] != num_classes:
        raise ValueError(f"soft targets have {target.shape[-1]} classes, the head has {num_classes}")
    return target.to(dtype)


class MarginHead(nn.Module):
    """Cosine-similarity head with an additive angular (ArcFace) or cosine (CosFace) margin.

    With soft targets the margin is applied in proportion to each class's target weight, which
    reduces to the usual formulation for one-hot labels.
    """

    def __init__(self, in_features: int, num_classes: int, *, kind: str, scale: float, margin: float) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"MarginHead kind must be 'arcface' or 'cosface', got {kind!r}")
        self.kind = kind
        self.scale = float(scale)
        self.margin = float(margin)
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embedding: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(embedding)
        if target is None:
            return self.scale * cos
        cos32 = cos.float().clamp(-1.0, 1.0)
        if self.kind == "arcface":
            sin = torch.sqrt((1.0 - cos32 * cos32).clamp_min(1e-9))
            phi = cos32 * math.cos(self.margin) - sin * math.sin(self.margin)
            # Past theta = pi - m, cos(theta + m) stops decreasing; fall back to the CosFace-style
            # penalty there (insightface's "th / mm" trick) so the target logit stays monotone.
            th = math.cos(math.pi - self.margin)
            mm = math.sin(math.pi - self.margin) * self.margin
            phi = torch.where(cos32 > th, phi, cos32 - mm)
        else:
            phi = cos32 - self.margin
        w = _target_weights(target, self.num_classes, cos32.dtype)
        return (self.scale * (cos32 + w * (phi - cos32))).to(cos.dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, classes={self.num_classes}, s={self.scale}, m={self.margin}"


class LinearHead(nn.Module):
    """Plain softmax classifier; accepts (and ignores) a target so all heads share one call shape."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, embedding: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(embedding)


def build_head(kind: str, in_features: int, num_classes: int, *, scale: float, margin: float) -> nn.Module:
    if kind == "softmax":
        return LinearHead(in_features, num_classes)
    return MarginHead(in_features, num_classes, kind=kind, scale=scale, margin=margin)
