"""The weld classifier: timm backbone -> embedding -> ArcFace/CosFace/softmax head.

Input contract (weldray.preprocessing): float32 NCHW raw RGB in [0, 255]. The backbone's
mean/std normalisation is a pair of buffers inside the module, so it travels into ONNX.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
from torch import nn

from weldray.config import ModelConfig
from weldray.models.heads import build_head
from weldray.models.weights import load_pretrained

log = logging.getLogger(__name__)


class WeldClassifier(nn.Module):
    """``forward(x)`` -> logits ``[B, C]`` (``s * cos`` for margin heads, no margin);
    ``forward(x, target)`` -> training logits with the margin on the target class."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        head: str,
        embedding_dim: int,
        scale: float,
        margin: float,
        image_size: int,
        classes: list[str] | None = None,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding = nn.Sequential(
            nn.Linear(backbone.num_features, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim)
        )
        self.head = build_head(head, embedding_dim, num_classes, scale=scale, margin=margin)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.num_classes = num_classes
        self.image_size = image_size
        self.classes = list(classes) if classes else [str(i) for i in range(num_classes)]
        if len(self.classes) != num_classes:
            raise ValueError(f"{len(self.classes)} class names for {num_classes} classes")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone((x - self.mean) / self.std))

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x), target)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, new layers) trainable parameters, for discriminative learning rates."""
        back = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        return back, new


def freeze_stages(backbone: nn.Module, n: int) -> int:
    """Freeze the first ``n`` coarse parameter groups of a timm model (group 0 is the stem,
    then one group per stage); returns the number of frozen tensors."""
    if n <= 0:
        return 0
    from timm.models import group_parameters

    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    frozen = 0
    names = dict(backbone.named_parameters())
    for gid in sorted(groups)[:n]:
        for name in groups[gid]:
            names[name].requires_grad_(False)
            frozen += 1
    return frozen


def build_classifier(
    cfg: ModelConfig,
    num_classes: int,
    *,
    pretrained: bool | None = None,
    classes: list[str] | None = None,
) -> WeldClassifier:
    """Build from config. ``pretrained=None`` follows ``cfg.pretrained``; checkpoint loading passes
    ``False`` because the state dict overwrites every weight anyway."""
    import timm

    use_pretrained = cfg.pretrained if pretrained is None else pretrained
    backbone = timm.create_model(
        cfg.backbone,
        pretrained=False,
        num_classes=0,
        drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate,
    )
    if use_pretrained:
        source = load_pretrained(backbone, cfg.backbone, cfg.weights)
    else:
        source = "random init (model.pretrained=false)"
    # Where a model's starting weights come from is worth a line; a model rebuilt to load a checkpoint is not.
    log.log(
        logging.INFO if pretrained is None else logging.DEBUG,
        "built %s (%s head, %d classes), weights: %s", cfg.backbone, cfg.head, num_classes, source,
    )
    frozen = freeze_stages(backbone, cfg.freeze_stages)
    if frozen:
        log.info("froze %d tensors in the first %d stages", frozen, cfg.freeze_stages)
    pcfg = getattr(backbone, "pretrained_cfg", None) or {}
    model = WeldClassifier(
        backbone,
        num_classes,
        head=cfg.head,
        embedding_dim=cfg.embedding_dim,
        scale=cfg.scale,
        margin=cfg.margin,
        image_size=cfg.image_size,
        classes=classes,
        mean=tuple(pcfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(pcfg.get("std", (0.229, 0.224, 0.225))),
    )
    model.weights_source = source  # type: ignore[assignment]
    model.model_config = asdict(cfg)  # type: ignore[assignment]
    return model
