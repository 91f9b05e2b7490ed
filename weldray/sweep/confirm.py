"""Confirmation of a search by k-fold group cross-validation: the top trials and the default config, each
trained on the same folds with the same seed (``weldray cv``'s folds), compared fold by fold with the default.

A trial's own figure comes from a few dozen validation photos and is the best of many tries: it flatters
itself. The winner is the candidate with the highest CV mean among those whose mean paired difference from
the default exceeds two standard errors of the per-fold differences; when none does, the default wins.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from weldray.config import WeldrayConfig, load_config
from weldray.sweep.space import Study

log = logging.getLogger(__name__)

DEFAULT = "default"
#: Paired differences must exceed this many standard errors to count as better than the default.
NOISE_SE = 2.0


def compare(scores: dict[str, list[float]], folds: list[int]) -> dict[str, Any]:
    """Per-candidate CV mean +- std and paired differences from ``scores[DEFAULT]``; the winner and a one-line
    verdict. ``scores``: candidate -> balanced accuracy per fold (same fold order for all)."""
    base = np.asarray(scores[DEFAULT], dtype=float)
    rows = []
    for label, values in scores.items():
        v = np.asarray(values, dtype=float)
        diff = v - base
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
        mean_diff = float(diff.mean())
        rows.append(
            {
                "label": label,
                "per_fold": v.tolist(),
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "diff": diff.tolist(),
                "mean_diff": mean_diff,
                "se_diff": se,
                "beats_default": label != DEFAULT and mean_diff > 0 and mean_diff > NOISE_SE * se,
            }
        )
    rows.sort(key=lambda r: -r["mean"])
    better = [r for r in rows if r["beats_default"]]
    if better:
        winner = better[0]["label"]
        verdict = (
            f"{winner} beats the default: CV mean {better[0]['mean']:.3f} vs {float(base.mean()):.3f}, paired "
            f"difference {better[0]['mean_diff']:+.3f} +- {better[0]['se_diff']:.3f} (SE) over {len(folds)} folds."
        )
    else:
        winner = DEFAULT
        top = rows[0]
        best = (
            f"the default has the best CV mean, {top['mean']:.3f}"
            if top["label"] == DEFAULT or top["mean"] == float(base.mean())
            else f"best CV mean {top['label']} {top['mean']:.3f} vs default {float(base.mean()):.3f}"
        )
        verdict = f"No candidate beats the default beyond fold-to-fold noise ({best}): best.yaml is the default."
    return {"folds": folds, "candidates": rows, "winner": winner, "verdict": verdict}


def candidate_overrides(study: Study, table: Any, k: int) -> dict[str, list[str]]:
    """``{label: overrides}``: the default (the space's fixed overrides alone) and the best ``k`` distinct trials."""
    from weldray.sweep.results import ranked, trial_params

    out = {DEFAULT: list(study.overrides)}
    seen: set[str] = set()
    for _, row in ranked(table, study).iterrows():
        if len(out) > k:
            break
        overrides = study.trial_overrides(trial_params(row, study))
        key = json.dumps(overrides)
        if key not in seen:
            seen.add(key)
            out[row["trial"]] = overrides
    return out


def cross_validate_candidates(
    study: Study, candidates: dict[str, list[str]], data_root: str, sweep_dir: Path
) -> dict[str, list[float]]:
    """Balanced accuracy per fold of each candidate, as ``weldray cv`` measures it (summaries in
    ``<sweep_dir>/cv/``); a candidate whose summary of the same recipe and folds exists is not re-run (a resumed
    sweep). Every fold of every candidate is one training run, and they run as many at once as the cluster holds
    (the search's rule, :func:`weldray.sweep.run.max_concurrent`)."""
    from weldray.sweep.run import max_concurrent
    from weldray.training.cv import finished_summary, fold_config, summarize_folds, train_runs

    summaries: dict[str, dict[str, Any]] = {}
    todo: dict[str, tuple[WeldrayConfig, list[int]]] = {}
    for label, overrides in candidates.items():
        cfg = load_config([*overrides, f"data.root={data_root}", f"output_dir={sweep_dir}"])
        folds = study.sweep.confirm_folds or list(range(cfg.data.n_folds))
        summary = finished_summary(cfg, f"confirm-{label}", folds)
        if summary:
            summaries[label] = summary
        else:
            todo[label] = (cfg, folds)
    if todo:
        cfgs = [fold_config(cfg, k, f"confirm-{label}") for label, (cfg, folds) in todo.items() for k in folds]
        concurrent = max_concurrent(study, cfgs[0])
        log.info("confirmation: %d candidate(s), %d training runs, %d at once", len(todo), len(cfgs), concurrent)
        run_dirs = iter(train_runs(cfgs, concurrent))  # in the order of cfgs: candidate by candidate, fold by fold
        for label, (cfg, folds) in todo.items():
            summaries[label] = summarize_folds(cfg, folds, f"confirm-{label}", [next(run_dirs) for _ in folds])
    scores = {}
    for label in candidates:
        scores[label] = [f["balanced_accuracy"] for f in summaries[label]["folds"]]
        log.info("confirmation: %s CV balanced accuracy %.3f", label, float(np.mean(scores[label])))
    return scores
