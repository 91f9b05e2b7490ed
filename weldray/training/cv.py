"""K-fold group cross-validation: one training run per fold (fold k held out as the test set), and the
pooled out-of-fold predictions that judge and calibrate the final fit of the same recipe."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig

if TYPE_CHECKING:
    from weldray.export import ExportResult

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


def seed_ensemble_name(cfg: WeldrayConfig, seeds: int) -> str:
    """The default name of ``weldray cv --seeds`` from ``cfg.seed`` on: ``cv-<recipe hash>-<seeds>seeds``."""
    return f"{cv_name(cfg)}-{seeds}seeds"


def seed_ensemble_summary(members: list[WeldrayConfig]) -> dict[str, Any] | None:
    """The ``weldray cv --seeds`` summary (default name) that measures an ensemble of these runs' recipe, if the
    runs are one recipe with consecutive seeds and that CV has been run; else None."""
    base = min(members, key=lambda c: c.seed)
    seeds = sorted(c.seed for c in members)
    if seeds != list(range(base.seed, base.seed + len(members))) or any(
        recipe_fingerprint(replace(c, seed=base.seed)) != recipe_fingerprint(base) for c in members
    ):
        return None
    path = cv_summary_path(base, seed_ensemble_name(base, len(members)))
    return json.loads(path.read_text()) if path.is_file() else None


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


def finished_summary(cfg: WeldrayConfig, name: str, folds: list[int]) -> dict[str, Any] | None:
    """The summary ``<name>.json`` if it is a CV of this recipe over these folds, with TTA figures where
    ``training.tta`` asks for them (a resumed job does not re-run it), else None."""
    path = cv_summary_path(cfg, name)
    summary = json.loads(path.read_text()) if path.is_file() else None
    if (
        summary
        and summary.get("recipe_fingerprint") == recipe_fingerprint(cfg)
        and [f["fold"] for f in summary["folds"]] == folds
        and (not cfg.training.tta or "tta_balanced_accuracy_mean" in summary)
    ):
        return summary
    return None


def cross_validate(
    cfg: WeldrayConfig, folds: list[int] | None = None, *, name: str | None = None, seeds: int = 1
) -> dict[str, Any]:
    """Train one run per fold, one after another; returns (and writes
    ``<output_dir>/cv/<name>.json``) per-fold and mean +- std balanced accuracy on the held-out folds, and the
    pooled out-of-fold figures with the temperature fitted on them (``oof_temperature``) and their report
    (``<output_dir>/cv/<name>/report.md``).

    With ``seeds`` > 1, the CV of the ensemble of that many seeds (``cfg.seed``, ``cfg.seed + 1``, ...): one CV
    per seed (``<name>-seed<s>``; without a name, each seed's own default name, the CV that ``weldray train``
    of that seed finds), reusing any already finished, then :func:`summarize_seed_ensemble`. Every member of a
    fold's ensemble trained without that fold, so its figures are honest outer-CV figures."""
    folds = list(range(cfg.data.n_folds)) if folds is None else folds
    if seeds > 1:
        members = []
        for seed in range(cfg.seed, cfg.seed + seeds):
            member = replace(cfg, seed=seed)
            member_name = f"{name}-seed{seed}" if name else cv_name(member)
            done = finished_summary(member, member_name, folds)
            if done:
                log.info("seed %d: reusing the finished CV %s", seed, done["path"])
            members.append(done or cross_validate(member, folds, name=member_name))
        return summarize_seed_ensemble(cfg, members, name or seed_ensemble_name(cfg, seeds))
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
    temperature = fit_temperature(_single_view(logits), rows["label_index"].to_numpy())
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


def _single_view(x: np.ndarray) -> np.ndarray:
    """View 0, the identity, of per-view ``[N, V, C]`` logits or probabilities; ``[N, C]`` as it is."""
    return x[:, 0] if x.ndim == 3 else x


def _calibrated_predictions(run_dir: Path, temperature: float) -> tuple[pd.DataFrame, np.ndarray]:
    """A fold run's test rows, sorted by path, and its probabilities at ``temperature``: ``[N, C]``, or
    ``[N, V, C]`` (view 0 the identity) where the run was evaluated with TTA."""
    from weldray.evaluation.metrics import softmax
    from weldray.evaluation.report import read_predictions

    rows, logits = read_predictions(run_dir / "report")
    order = rows["path"].argsort().to_numpy()
    return rows.iloc[order].reset_index(drop=True), softmax(logits[order], temperature)


def summarize_seed_ensemble(cfg: WeldrayConfig, members: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The CV summary of an ensemble of member CVs over the same folds (one per seed): on each fold, the mean of
    the members' probabilities (each calibrated by its own out-of-fold temperature) for the fold's photos, which
    no member trained on. Besides the ensemble's figures, each fold's row keeps its members' balanced accuracies,
    so the gain is read paired, fold by fold; writes ``<output_dir>/cv/<name>.json`` and ``<name>/report.md``.
    Where every member was evaluated with TTA, the ensemble's TTA figures too: each member's views averaged, then
    the members."""
    from weldray.evaluation.metrics import classification_metrics, fit_temperature
    from weldray.evaluation.report import report_from_logits

    folds = [f["fold"] for f in members[0]["folds"]]
    if any([f["fold"] for f in m["folds"]] != folds for m in members):
        raise ValueError(f"the member CVs of {name} do not cover the same folds: {[m['name'] for m in members]}")
    classes = cfg.data.labels
    per_fold = []
    for i, k in enumerate(folds):
        preds = [_calibrated_predictions(Path(m["folds"][i]["run_dir"]), m["oof_temperature"]) for m in members]
        rows = preds[0][0]
        if any(not r["path"].equals(rows["path"]) for r, _ in preds):
            raise ValueError(f"the member CVs of {name} held out different photos in fold {k}")
        per_fold.append((rows, [p for _, p in preds]))
    tta = all(p.ndim == 3 for _, probs in per_fold for p in probs)
    results, oof_rows, oof_probs = [], [], []
    for i, (k, (rows, probs)) in enumerate(zip(folds, per_fold, strict=True)):
        # the members' mean: per view with TTA ([N, V, C], view 0 the identity), else of the single view
        mean = np.mean(probs if tta else [_single_view(p) for p in probs], axis=0)
        labels = rows["label_index"].to_numpy()
        metrics = classification_metrics(labels, _single_view(mean), classes)
        row = {
            "fold": k,
            "balanced_accuracy": metrics["balanced_accuracy"],
            "accuracy": metrics["accuracy"],
            "roc_auc": metrics["roc_auc"],
            "member_balanced_accuracy": [m["folds"][i]["balanced_accuracy"] for m in members],
        }
        if tta:
            voted = classification_metrics(labels, mean.mean(axis=1), classes)
            row |= {"tta_balanced_accuracy": voted["balanced_accuracy"], "tta_roc_auc": voted["roc_auc"]}
        results.append(row)
        oof_rows.append(rows.assign(fold=k))
        oof_probs.append(mean)
    bal = np.array([r["balanced_accuracy"] for r in results])
    member_bal = np.array([r["member_balanced_accuracy"] for r in results])
    rows = pd.concat(oof_rows, ignore_index=True)
    log_probs = np.log(np.clip(np.concatenate(oof_probs), 1e-12, None))  # logits of the mean probabilities
    temperature = fit_temperature(_single_view(log_probs), rows["label_index"].to_numpy())
    out = cv_summary_path(cfg, name)
    report = report_from_logits(
        log_probs, rows, classes, temperature, out.with_suffix(""),
        title=f"{name}: out-of-fold predictions of an ensemble of {len(members)} seeds, {len(folds)} folds",
        calibration=f"fitted on these {len(rows)} out-of-fold predictions of the ensemble",
    )
    summary: dict[str, Any] = {
        "name": name,
        "recipe_fingerprint": recipe_fingerprint(cfg),
        "members": [m["path"] for m in members],
        "folds": results,
        "balanced_accuracy_mean": float(bal.mean()),
        "balanced_accuracy_std": float(bal.std(ddof=1)) if len(bal) > 1 else 0.0,
        "member_balanced_accuracy_mean": float(member_bal.mean()),
        "oof_temperature": temperature,
        "oof": {"n": len(rows), **{k: v for k, v in report["single_view"].items() if isinstance(v, float)}},
        "report": str(out.with_suffix("") / "report.md"),
        "path": str(out),
    }
    if tta:
        summary["tta_balanced_accuracy_mean"] = float(np.mean([r["tta_balanced_accuracy"] for r in results]))
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


@dataclass
class SeedEnsemble:
    """What ``weldray train DATA --seeds N`` made: the members' run directories, their export, and the outer CV of
    the same ensemble (``weldray cv DATA --seeds N``), or None where that has not run."""

    runs: list[Path]
    export: ExportResult
    cv_summary: dict[str, Any] | None


def train_seed_ensemble(cfg: WeldrayConfig, seeds: int, fmt: str | None = None) -> SeedEnsemble:
    """``weldray train DATA --seeds N``: the final fits of ``cfg`` with seeds ``cfg.seed`` .. ``cfg.seed + N - 1``,
    one after another (named ``<run_name>-seed<s>`` when ``training.run_name`` is set, so the same command resumes),
    then their ONNX ensemble graph, ``<output_dir>/ensembles/<name>-<N>seeds/weld_classifier.onnx``, each member
    calibrated by its own temperature (its recipe's out-of-fold one where its CV has run). What the ensemble scores
    is what ``weldray cv DATA --seeds N`` measures, by the outer CV; the model card quotes it when that has run."""
    from weldray.export import export_checkpoint, export_format
    from weldray.training.trainer import run_id_for

    if seeds < 2:
        raise ValueError(f"a seed ensemble needs 2 or more seeds, not {seeds}")
    fmt = export_format(cfg, fmt)  # a format this machine cannot export fails before hours of training
    named = cfg.training.run_name
    members = [
        replace(cfg, seed=s, training=replace(cfg.training, run_name=f"{named}-seed{s}" if named else None))
        for s in range(cfg.seed, cfg.seed + seeds)
    ]
    output = Path(cfg.output_dir) / "ensembles" / f"{run_id_for(cfg)}-{seeds}seeds" / "weld_classifier.onnx"
    runs = train_runs(members)
    return SeedEnsemble(runs, export_checkpoint(runs, cfg, fmt=fmt, output=output), seed_ensemble_summary(members))
