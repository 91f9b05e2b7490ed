"""K-fold group cross-validation: one training run per fold (fold k held out as the test set)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from weldray.config import WeldrayConfig

log = logging.getLogger(__name__)


def cross_validate(
    cfg: WeldrayConfig, folds: list[int] | None = None, *, name: str | None = None
) -> dict[str, Any]:
    """Train one run per fold; returns (and writes ``<output_dir>/cv/<name>.json``) per-fold and
    mean +- std balanced accuracy on the held-out folds."""
    from weldray.training.trainer import train

    folds = list(range(cfg.data.n_folds)) if folds is None else folds
    name = name or cfg.training.run_name or f"cv-{cfg.fingerprint()[:6]}"
    results = []
    for k in folds:
        fold_cfg = replace(cfg, training=replace(cfg.training, cv_fold=k, run_name=f"{name}-fold{k}"))
        run_dir = train(fold_cfg)
        m = json.loads((run_dir / "metrics.json").read_text())
        row = {
            "fold": k,
            "run_dir": str(run_dir),
            "balanced_accuracy": m["test"]["single_view"]["balanced_accuracy"],
            "accuracy": m["test"]["single_view"]["accuracy"],
            "roc_auc": m["test"]["single_view"]["roc_auc"],
            "epochs_run": m["epochs_run"],
            "wall_s": m["total_wall_s"],
        }
        if "tta" in m["test"]:
            row["tta_balanced_accuracy"] = m["test"]["tta"]["balanced_accuracy"]
        log.info("fold %d: balanced accuracy %.3f", k, row["balanced_accuracy"])
        results.append(row)
    bal = np.array([r["balanced_accuracy"] for r in results])
    summary = {
        "name": name,
        "folds": results,
        "balanced_accuracy_mean": float(bal.mean()),
        "balanced_accuracy_std": float(bal.std(ddof=1)) if len(bal) > 1 else 0.0,
    }
    if all("tta_balanced_accuracy" in r for r in results):
        summary["tta_balanced_accuracy_mean"] = float(np.mean([r["tta_balanced_accuracy"] for r in results]))
    out = Path(cfg.output_dir) / "cv" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary["path"] = str(out)
    out.write_text(json.dumps(summary, indent=2))
    return summary
