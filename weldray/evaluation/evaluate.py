"""``weldray evaluate RUN_DIR DATA``: the report for a trained run on a dataset."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from weldray.config import ConfigError, WeldrayConfig

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


def _check_labels(manifest_path: Path, labels: pd.Series, classes: list[str]) -> None:
    unknown = set(labels) - set(classes)
    if unknown:
        raise ValueError(f"{manifest_path} has labels {sorted(unknown)} the model does not know ({classes})")


def _report_dir_name(cfg: WeldrayConfig, sha: str) -> str:
    name = Path(str(cfg.data.root or "procedural").rstrip("/")).name or "data"
    return f"report_{name}-{sha[:8]}"


def evaluate(run_dir: str | Path, cfg: WeldrayConfig) -> Path:
    """Evaluate ``RUN_DIR/model.pt`` on ``cfg.data.root``, or an exported ``.onnx`` model
    (:func:`evaluate_exported`); returns the path of report.md.

    On the run's own training data (same manifest hash) "auto" evaluates only the held-out rows
    and writes ``RUN_DIR/report/``; another dataset is evaluated whole into ``RUN_DIR/report_<name>/``.
    """
    from weldray.data import load_manifest, manifest_sha256, resolve_dataset
    from weldray.evaluation.report import evaluate_rows
    from weldray.models import load_checkpoint

    if str(run_dir).endswith(".onnx"):
        return evaluate_exported(run_dir, cfg)
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
        raise ConfigError(
            "training.eval_split",
            f"{run_dir} is a final fit on every row of {manifest_path}: none is held out to evaluate on. Its "
            "figures are the out-of-fold ones of `weldray cv` (metrics.json 'evaluation'); evaluate it on "
            "other photos, or train with training.holdout=true for a held-out test split"
        )
    if rows.empty:
        raise ValueError(f"no rows to evaluate in {manifest_path} ({what})")
    _check_labels(manifest_path, manifest["label"], list(meta.classes))
    out = run_dir / ("report" if same and cfg.training.eval_split == "auto" else _report_dir_name(cfg, sha))
    evaluate_rows(
        model, meta, rows, out, cfg, title=f"{meta.run_id} on {cfg.data.root or 'procedural'}: {what}"
    )
    return out / "report.md"


def evaluate_exported(model_path: str | Path, cfg: WeldrayConfig) -> Path:
    """Evaluate an exported model (one model or an ensemble graph, fp32 or INT8) on ``cfg.data.root``, classified
    through :class:`~weldray.inference.WeldClassifierInference` as ``weldray predict`` and the HTTP API classify
    (``serve.provider``, ``serve.tta``); writes ``<model>_report_<data>-<hash>/`` beside it (a model read from a
    URI: under ``<output_dir>/evaluations/``) and returns its report.md. This is how a shipped model is checked
    on photos that none of its members saw; the photos it trained on (the sidecar's manifest) are refused unless
    ``training.eval_split`` names rows."""
    from rich.console import Console
    from rich.progress import track

    from weldray.data import load_manifest, manifest_sha256, resolve_dataset
    from weldray.evaluation.report import PREDICTIONS_FILE, report_from_logits
    from weldray.inference import WeldClassifierInference

    if cfg.training.tta:
        raise ConfigError(
            "training.tta",
            "10 views evaluate a run directory's PyTorch model; an exported model is evaluated as it is served: "
            "serve.tta=true adds the mirrored view",
        )
    model_path = str(model_path)
    clf = WeldClassifierInference(model_path, providers=cfg.serve.provider, tta=cfg.serve.tta)
    manifest_path = resolve_dataset(cfg)
    manifest = load_manifest(manifest_path)
    sha = manifest_sha256(manifest_path)
    same = sha == clf.sidecar.manifest_sha256
    if same and cfg.training.eval_split == "auto":
        raise ConfigError(
            "training.eval_split",
            f"{model_path} was trained on {manifest_path} (the manifest its sidecar names): its figures there "
            "would include training photos. Evaluate it on photos it never saw; for held-out figures evaluate "
            "the run directory (`weldray evaluate RUN_DIR DATA`) or use `weldray cv`; training.eval_split=all "
            "reports them anyway",
        )
    rows, what = _rows_for(manifest, same, None, cfg.training.eval_split)
    if rows.empty:
        raise ValueError(f"no rows to evaluate in {manifest_path} ({what})")
    classes = list(clf.classes)
    _check_labels(manifest_path, rows["label"], classes)
    rows = rows.assign(label_index=[classes.index(label) for label in rows["label"]]).reset_index(drop=True)
    results = track(
        clf.iter_predict(rows["path"].tolist()), total=len(rows), description=f"evaluating {model_path}",
        console=Console(stderr=True), transient=True,
    )
    probs = np.array([[r["probabilities"][c] for c in classes] for r in results])
    members = clf.sidecar.members
    temperature = 1.0 if members else clf.temperature
    # the model's logits up to a constant per photo: softmax(logits / T) gives back the served probabilities
    logits = temperature * np.log(np.clip(probs, 1e-12, None))
    out = _exported_report_dir(model_path, cfg, sha)
    out.mkdir(parents=True, exist_ok=True)
    rows[["path", "label_index"]].assign(logits=logits.tolist()).to_parquet(out / PREDICTIONS_FILE, index=False)
    calibration = (
        f"each of its {len(members)} members is calibrated at its own temperature inside the graph" if members
        else "exported with the model"
    )
    served = f"{clf.sidecar.precision}, {clf.provider}" + (", mirrored view averaged" if cfg.serve.tta else "")
    report_from_logits(
        logits, rows, classes, temperature, out,
        title=f"{model_path} ({served}) on {cfg.data.root or 'procedural'}: {what}",
        calibration=calibration, explain=_onnx_explainer(clf) if clf.sidecar.maps_output else None,
    )
    return out / "report.md"


def _exported_report_dir(model_path: str, cfg: WeldrayConfig, sha: str) -> Path:
    """``<model>_report_<data>-<hash>/`` beside a local model (its fp32 and INT8 files lie side by side); under
    ``<output_dir>/evaluations/`` for a model read from a URI, named with the URI's hash."""
    stem = model_path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".onnx")
    if "://" not in model_path:
        return Path(model_path).parent / f"{stem}_{_report_dir_name(cfg, sha)}"
    uri_hash = hashlib.sha256(model_path.encode()).hexdigest()[:8]
    return Path(cfg.output_dir) / "evaluations" / f"{stem}-{uri_hash}_{_report_dir_name(cfg, sha)}"


def _onnx_explainer(clf: Any) -> Any:
    """The report's heatmaps from the exported model's own class maps (what ``weldray predict --explain`` draws)."""
    from weldray.inference.explain import overlay

    def explain(path: str, class_index: int) -> Any:
        _, heat, photo = clf.explain(path, clf.classes[class_index])
        return overlay(photo, heat)

    return explain


__all__ = ["evaluate", "evaluate_exported"]
