"""Agreement between two models' probabilities on the same real images."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from weldray.inference.classifier import softmax
from weldray.preprocessing import ImageError, prepare

log = logging.getLogger(__name__)


@dataclass
class Agreement:
    n: int
    argmax_agreement: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Argmax agreement and probability differences of ``candidate`` against ``reference``."""
    if reference.shape != candidate.shape or reference.ndim != 2 or not len(reference):
        raise ValueError(f"cannot compare probabilities of shapes {reference.shape} and {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return Agreement(
        n=len(reference),
        argmax_agreement=float(np.mean(reference.argmax(1) == candidate.argmax(1))),
        max_abs_prob_diff=float(diff.max()),
        mean_abs_prob_diff=float(diff.mean()),
    )


def load_inputs(paths: list[str], size: int) -> tuple[np.ndarray, list[str]]:
    """float32 NCHW inputs via the shared preprocessing; unreadable images are reported and skipped."""
    arrays, used = [], []
    for path in paths:
        try:
            arrays.append(prepare(path, size))
            used.append(path)
        except (ImageError, OSError) as exc:
            log.warning("skipping check image %s: %s", path, exc)
    if not arrays:
        raise ValueError(f"none of the {len(paths)} check images could be read")
    return np.stack(arrays), used


def torch_probabilities(model, x: np.ndarray, temperature: float, batch_size: int = 16) -> np.ndarray:
    import torch

    model = model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[i : i + batch_size])).float().numpy())
    return softmax(np.concatenate(out), temperature)


def session_probabilities(session, x: np.ndarray, temperature: float, batch_size: int = 16) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return softmax(np.concatenate(out), temperature)


def session_latency_ms(session, x: np.ndarray, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of one session.run on ``x``."""
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
