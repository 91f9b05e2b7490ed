"""Batched inference over image paths, optionally with 10-view test-time augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from weldray.preprocessing import prepare

View = Callable[[torch.Tensor], torch.Tensor]


def _crop(frac: float, corner: str) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        c = int(round(size * frac))
        top = 0 if corner[0] == "t" else size - c
        left = 0 if corner[1] == "l" else size - c
        return TF.resize(x[..., top : top + c, left : left + c], [size, size], antialias=True)

    return view


#: The 10 TTA views: identity, flips, small rotations, 90% corner crops (all keep the squash policy).
TTA_VIEWS: tuple[tuple[str, View], ...] = (
    ("identity", lambda x: x),
    ("hflip", lambda x: x.flip(-1)),
    ("vflip", lambda x: x.flip(-2)),
    ("hvflip", lambda x: x.flip(-1).flip(-2)),
    ("rot+10", lambda x: TF.rotate(x, 10.0, interpolation=TF.InterpolationMode.BILINEAR)),
    ("rot-10", lambda x: TF.rotate(x, -10.0, interpolation=TF.InterpolationMode.BILINEAR)),
    ("crop_tl", _crop(0.9, "tl")),
    ("crop_tr", _crop(0.9, "tr")),
    ("crop_bl", _crop(0.9, "bl")),
    ("crop_br", _crop(0.9, "br")),
)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    paths: Sequence[str],
    image_size: int,
    *,
    tta: bool = False,
    batch_size: int = 32,
) -> np.ndarray:
    """Logits ``[N, C]``; with ``tta`` ``[N, 10, C]`` (one per view, soft-voted by the caller
    after temperature scaling)."""
    from rich.console import Console
    from rich.progress import track

    model.eval()
    device = next(model.parameters()).device
    out = []
    starts = range(0, len(paths), batch_size)
    if len(starts) > 1:  # progress on stderr for more photos than one batch (a report on a large folder)
        starts = track(starts, description=f"predicting {len(paths)} photos", console=Console(stderr=True))
    for i in starts:
        x = torch.from_numpy(np.stack([prepare(p, image_size) for p in paths[i : i + batch_size]])).to(device)
        if tta:
            out.append(torch.stack([model(view(x)) for _, view in TTA_VIEWS], dim=1).float().cpu())
        else:
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()
