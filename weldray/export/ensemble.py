"""Ensembles exported as one ONNX graph: the mean of the members' calibrated probabilities.

The graph's output is the log of that mean, with temperature 1 in the sidecar, so every consumer
(``WeldClassifierInference``, Serve, the parity and INT8 checks) computes ``softmax(output)`` = the mean
of ``softmax(logits_k / T_k)`` without knowing it serves an ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from weldray.models import CheckpointMeta, load_checkpoint


class Ensemble(torch.nn.Module):
    """Members sharing one input size and class list; ``forward`` returns log mean calibrated probabilities."""

    def __init__(self, members: Sequence[torch.nn.Module], temperatures: Sequence[float]) -> None:
        super().__init__()
        if len(members) != len(temperatures) or len(members) < 2:
            raise ValueError(f"an ensemble needs >= 2 members with one temperature each, got {len(members)}")
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor(list(temperatures), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack(
            [torch.softmax(m(x).float() / t, dim=1) for m, t in zip(self.members, self.temperatures, strict=True)]
        )
        # Never log(0): a member that is certain of a class still leaves the mean a finite log.
        return torch.log(probs.mean(0).clamp_min(1e-12))


def load_ensemble(
    sources: Sequence[str | Path], temperatures: Sequence[float] | None = None
) -> tuple[Ensemble, CheckpointMeta]:
    """Members from checkpoints (files or run dirs) with their own temperatures, or ``temperatures`` (e.g. the
    out-of-fold temperature of a CV, for fold models that have none). Classes and input size must agree."""
    loaded = [load_checkpoint(s) for s in sources]
    first = loaded[0][1]
    for source, (_, meta) in zip(sources, loaded, strict=True):
        if meta.classes != first.classes or meta.image_size != first.image_size:
            raise ValueError(
                f"ensemble members must share classes and input size: {source} has {meta.classes} @ "
                f"{meta.image_size}, {sources[0]} has {first.classes} @ {first.image_size}"
            )
    temps = list(temperatures) if temperatures is not None else [m.temperature for _, m in loaded]
    model = Ensemble([m for m, _ in loaded], temps).eval()
    members = [
        {"source": str(s), "run_id": m.run_id, "temperature": t}
        for s, (_, m), t in zip(sources, loaded, temps, strict=True)
    ]
    meta = replace(
        first,
        temperature=1.0,  # applied inside the graph, per member
        run_id="ensemble-" + "+".join(m.run_id or "?" for _, m in loaded),
        model={**first.model, "ensemble": members},
        metrics={},
    )
    return model, meta
