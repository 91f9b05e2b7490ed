"""``weldray evaluate RUN_DIR DATA``: the report for a trained run on a dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import yaml

from weldray.config import WeldrayConfig

log = logging.getLogger(__name__)


def _rows_for(
    manifest: pd.DataFrame, same_data: bool, run_cv_fold: int | None, mode: str, run_holdout: bool = False
) -> tuple[pd.DataFrame, str]:
    from weldray.data.ray_dataset import select_rows
    from weldray.training.data import split_rows

    if mode == "auto":
        if same_data:
            split = split_rows(manifest, run_cv_fold, run_holdout)
            return split.test, f"held-out rows of the training data ({split.description})"
        return select_rows(manifest), "all rows (a dataset the run did not train on)"
    if mode == "all":
        if same_data:
            log.warning("evaluating every row of the training data: figures include training images")
        return select_rows(manifest), "all rows"
    return select_rows(manifest, splits=[mode]), f"the {mode} split"


def evaluate(run_dir: str | Path, cfg: WeldrayConfig) -> Path:
    """Evaluate ``RUN_DIR/model.pt`` on ``cfg.data.root``; returns the path of report.md.

    On the run's own training data (same manifest hash) "auto" evaluates only the held-out rows
    and writes ``RUN_DIR/report/``; another dataset is evaluated whole into ``RUN_DIR/report_<name>/``.
    """
    from weldray.data import load_manifest, manifest_sha256, resolve_dataset
    from weldray.evaluation.report import evaluate_rows
    from weldray.models import load_checkpoint

    run_dir = Path(run_dir)
    model, meta = load_checkpoint(run_dir)
    manifest_path = resolve_dataset(cfg)
    manifest = load_manifest(manifest_path)
    sha = manifest_sha256(manifest_path)
    same = sha == meta.manifest_sha256
    run_cfg_file = run_dir / "config.yaml"
    run_training = yaml.safe_load(run_cfg_file.read_text())["training"] if run_cfg_file.is_file() else {}
    cv_fold, holdout = run_training.get("cv_fold"), run_training.get("holdout", True)
    rows, what = _rows_for(manifest, same, cv_fold, cfg.training.eval_split, holdout)
    if rows.empty and same and cv_fold is None and not holdout:
        raise ValueError(
            f"{run_dir} is a final fit on every row of {manifest_path}: none is held out to evaluate on. Its "
            "figures are the out-of-fold ones of `weldray cv` (metrics.json 'evaluation'); evaluate it on "
            "other photos, or train with training.holdout=true for a held-out test split"
        )
    if rows.empty:
        raise ValueError(f"no rows to evaluate in {manifest_path} ({what})")
    unknown = set(manifest["label"]) - set(meta.classes)
    if unknown:
        raise ValueError(
            f"{manifest_path} has labels {sorted(unknown)} the model does not know ({meta.classes})"
        )
    name = Path(str(cfg.data.root or "procedural").rstrip("/")).name or "data"
    out = run_dir / ("report" if same and cfg.training.eval_split == "auto" else f"report_{name}-{sha[:8]}")
    evaluate_rows(
        model, meta, rows, out, cfg, title=f"{meta.run_id} on {cfg.data.root or 'procedural'}: {what}"
    )
    return out / "report.md"


__all__ = ["evaluate"]
