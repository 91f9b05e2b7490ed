"""K-fold group cross-validation: one training run per fold (fold k held out as the test set), and the
pooled out-of-fold predictions that judge and calibrate the final fit of the same recipe."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig

log = logging.getLogger(__name__)

# Training keys that say which rows a run sees, what it is called, how it is evaluated or logged: not how it trains.
_NOT_RECIPE = (
    "cv_fold", "run_name", "holdout", "tta", "eval_split", "log_tensorboard", "log_mlflow", "mlflow_tracking_uri"
)


def recipe_fingerprint(cfg: WeldrayConfig) -> str:
    """Hash of what decides the trained model (data, model, training recipe, seed): equal for a CV and
    the final fit of the same command line, whichever fold or run name each has."""
    training = {k: v for k, v in asdict(cfg.training).items() if k not in _NOT_RECIPE}
    blob = {"data": asdict(cfg.data), "model": asdict(cfg.model), "training": training, "seed": cfg.seed}
    if cfg.training.mix_real_ratio < 1:  # the synthetic images decide the model too
        blob["synthetic"] = asdict(cfg.synthetic)
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cv_name(cfg: WeldrayConfig) -> str:
    return f"cv-{recipe_fingerprint(cfg)[:6]}"


def cv_summary_path(cfg: WeldrayConfig, name: str | None = None) -> Path:
    """``<output_dir>/cv/<name>.json``; the default name is the recipe's, so ``weldray train`` finds it."""
    return Path(cfg.output_dir) / "cv" / f"{name or cv_name(cfg)}.json"


def fold_config(cfg: WeldrayConfig, fold: int, name: str) -> WeldrayConfig:
    """The training run of ``cfg`` with ``fold`` held out, named ``<name>-fold<fold>``."""
    return replace(cfg, training=replace(cfg.training, cv_fold=fold, run_name=f"{name}-fold{fold}"))


def _train_in_task(cfg: WeldrayConfig) -> str:
    from weldray.training.trainer import train

    return str(train(cfg, progress=False))


def train_runs(cfgs: list[WeldrayConfig], concurrent: int = 1) -> list[Path]:
    """The run directory of each config's training run, in order. With ``concurrent`` > 1, that many run at once,
    each driven by a Ray task (no CPU of its own) that starts its own Ray Train run, as Tune's trials do (what
    fits at once: :func:`weldray.training.trainer.runs_at_once`). The configs' data must already be resolved (a
    manifest: concurrent runs must not ingest one folder at the same time). A run's error is raised as itself, and
    nothing is retried."""
    from weldray.training.trainer import train

    if concurrent <= 1 or len(cfgs) == 1:
        return [train(c) for c in cfgs]
    import ray

    remote = ray.remote(num_cpus=0, max_retries=0)(_train_in_task)
    done: dict[int, Path] = {}
    pending: dict[Any, int] = {}
    todo = list(range(len(cfgs)))
    while todo or pending:
        while todo and len(pending) < concurrent:
            i = todo.pop(0)
            pending[remote.remote(cfgs[i])] = i
            log.info("training %s (%d at once)", cfgs[i].training.run_name, concurrent)
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            done[i] = Path(ray.get(ready[0]))
        except ray.exceptions.RayTaskError as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise exc.as_instanceof_cause() from None
        log.info("%s done: %s", cfgs[i].training.run_name, done[i])
    return [done[i] for i in range(len(cfgs))]


def cross_validate(cfg: WeldrayConfig, folds: list[int] | None = None, *, name: str | None = None) -> dict[str, Any]:
    """Train one run per fold, one after another; returns (and writes
    ``<output_dir>/cv/<name>.json``) per-fold and mean +- std balanced accuracy on the held-out folds, and the
    pooled out-of-fold figures with the temperature fitted on them (``oof_temperature``) and their report
    (``<output_dir>/cv/<name>/report.md``)."""
    folds = list(range(cfg.data.n_folds)) if folds is None else folds
    name = name or cv_name(cfg)
    run_dirs = train_runs([fold_config(cfg, k, name) for k in folds])
    return summarize_folds(cfg, folds, name, run_dirs)


def summarize_folds(cfg: WeldrayConfig, folds: list[int], name: str, run_dirs: list[Path]) -> dict[str, Any]:
    """The CV summary of fold runs that have finished (``run_dirs[i]`` held out ``folds[i]``); see
    :func:`cross_validate`."""
    from weldray.evaluation.metrics import fit_temperature
    from weldray.evaluation.report import read_predictions, report_from_logits

    results, oof_rows, oof_logits = [], [], []
    for k, run_dir in zip(folds, run_dirs, strict=True):
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
        rows, logits = read_predictions(run_dir / "report")
        oof_rows.append(rows.assign(fold=k))
        oof_logits.append(logits)
    bal = np.array([r["balanced_accuracy"] for r in results])
    summary: dict[str, Any] = {
        "name": name,
        "recipe_fingerprint": recipe_fingerprint(cfg),
        "folds": results,
        "balanced_accuracy_mean": float(bal.mean()),
        "balanced_accuracy_std": float(bal.std(ddof=1)) if len(bal) > 1 else 0.0,
    }
    if all("tta_balanced_accuracy" in r for r in results):
        summary["tta_balanced_accuracy_mean"] = float(np.mean([r["tta_balanced_accuracy"] for r in results]))

    # Every held-out row once, each predicted by the model that never saw it.
    rows, logits = pd.concat(oof_rows, ignore_index=True), np.concatenate(oof_logits)
    single = logits[:, 0] if logits.ndim == 3 else logits
    temperature = fit_temperature(single, rows["label_index"].to_numpy())
    out = cv_summary_path(cfg, name)
    classes = cfg.data.labels
    report = report_from_logits(
        logits, rows, classes, temperature, out.with_suffix(""),
        title=f"{name}: out-of-fold predictions of {len(folds)} of {cfg.data.n_folds} folds",
        calibration=f"fitted on these {len(rows)} out-of-fold predictions",
    )
    summary["oof_temperature"] = temperature
    summary["oof"] = {"n": len(rows), **{k: v for k, v in report["single_view"].items() if isinstance(v, float)}}
    summary["report"] = str(out.with_suffix("") / "report.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary["path"] = str(out)
    out.write_text(json.dumps(summary, indent=2))
    return summary


def export_fold_ensemble(cfg: WeldrayConfig, summary: dict[str, Any], fmt: str | None = None) -> Any:
    """The CV's fold models as one ONNX ensemble (``<cv dir>/<name>/ensemble/weld_classifier.onnx``), each
    member calibrated by the out-of-fold temperature. Its accuracy is *not* what the CV measured: every
    photo trained all members but one, so no fold of this CV is unseen by the ensemble."""
    from weldray.export import export_checkpoint

    runs = [f["run_dir"] for f in summary["folds"]]
    output = Path(summary["path"]).with_suffix("") / "ensemble" / "weld_classifier.onnx"
    return export_checkpoint(
        runs, cfg, fmt=fmt, output=output, temperatures=[summary["oof_temperature"]] * len(runs)
    )
