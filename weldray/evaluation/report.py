"""The evaluation report: metrics, calibration before/after temperature scaling, optional TTA,
confusion matrix / ROC / reliability PNGs, galleries of the most confident errors and of correct answers (with
heatmaps of the evidence when the model is at hand), report.md."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig
from weldray.evaluation.metrics import classification_metrics, expected_calibration_error, softmax
from weldray.evaluation.predict import TTA_VIEWS, predict_logits

log = logging.getLogger(__name__)

GALLERY_SIZE = 8


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
                fontsize=12,
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(labels: np.ndarray, curves: dict[str, np.ndarray], classes: list[str], path: Path) -> None:
    """ROC of the positive class (index 1, e.g. bad_weld) for each probability set."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, probs in curves.items():
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probs[:, 1], pos_label=1)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, probs[:, 1]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({classes[1]})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(labels: np.ndarray, curves: dict[str, np.ndarray], path: Path, n_bins: int = 10) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    edges = np.linspace(0, 1, n_bins + 1)
    for name, probs in curves.items():
        conf, correct = probs.max(1), probs.argmax(1) == labels
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = (conf > lo) & (conf <= hi)
            if m.any():
                xs.append(conf[m].mean())
                ys.append(correct[m].mean())
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {expected_calibration_error(probs, labels):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


Explainer = Callable[[str, int], Any]  # (photo path, class index) -> heatmap overlay of the photo (PIL image)


def heatmap_explainer(model: Any, image_size: int) -> Explainer:
    """Overlays of the evidence for a class (:mod:`weldray.inference.explain`) from a PyTorch classifier's class
    activation maps: the same heatmaps ``weldray predict --explain`` and the HTTP API draw from the ONNX model."""
    import torch

    from weldray.inference.explain import evidence_map, overlay, upsample
    from weldray.models.cam import class_maps
    from weldray.preprocessing import load_image, resize_for_model

    def explain(path: str, class_index: int) -> Any:
        photo = load_image(path)
        x = torch.from_numpy(np.asarray(resize_for_model(photo, image_size), np.float32).transpose(2, 0, 1)[None])
        with torch.no_grad():
            _, maps = class_maps(model.eval(), x)
        return overlay(photo, upsample(evidence_map(maps[0].numpy(), class_index), photo.size))

    return explain


def plot_gallery(rows: pd.DataFrame, path: Path, classes: list[str], explain: Explainer | None = None) -> None:
    """Photos with true/predicted class and confidence; with ``explain``, each beside its heatmap overlay for
    the predicted class (photo | heatmap)."""
    from weldray.preprocessing import load_image

    plt = _plt()
    per_item = 2 if explain else 1
    n = len(rows)
    items_per_row = min(4 // per_item, n)
    cols = items_per_row * per_item
    n_rows = (n + items_per_row - 1) // items_per_row
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.0 * cols, 3.3 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (_, r) in enumerate(rows.iterrows()):
        row_axes = axes[i // items_per_row, (i % items_per_row) * per_item :]
        row_axes[0].imshow(load_image(r["path"]).resize((224, 224)))
        row_axes[0].set_title(
            f"{Path(r['path']).name}\ntrue {classes[r['label_index']]}, "
            f"pred {classes[r['pred']]} {r['confidence']:.2f}",
            fontsize=8,
        )
        if explain:
            row_axes[1].imshow(explain(r["path"], int(r["pred"])).resize((224, 224)))
            row_axes[1].set_title(f"evidence for {classes[r['pred']]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


PREDICTIONS_FILE = "predictions.parquet"


def evaluate_rows(
    model: Any,
    meta: Any,
    rows: pd.DataFrame,
    out_dir: Path,
    cfg: WeldrayConfig,
    *,
    title: str,
    calibration: str = "fitted on the validation split",
) -> dict[str, Any]:
    """Evaluate ``rows`` (manifest rows) and write ``out_dir/report.md`` + PNGs and the raw logits per row
    (``predictions.parquet``, which cross-validation pools); returns the metrics."""
    logits = predict_logits(model, rows["path"].tolist(), meta.image_size, tta=cfg.training.tta)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows[["path", "label_index"]].assign(logits=[np.asarray(z).tolist() for z in logits]).to_parquet(
        out_dir / PREDICTIONS_FILE, index=False
    )
    return report_from_logits(
        logits, rows, list(meta.classes), float(meta.temperature), out_dir, title=title, calibration=calibration,
        explain=heatmap_explainer(model, meta.image_size),
    )


def read_predictions(out_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows and logits (``[N, C]``, or ``[N, V, C]`` with TTA) that :func:`evaluate_rows` wrote."""
    df = pd.read_parquet(out_dir / PREDICTIONS_FILE)
    return df[["path", "label_index"]], np.array([np.stack(z) if z.dtype == object else z for z in df["logits"]])


def report_from_logits(
    logits: np.ndarray,
    rows: pd.DataFrame,
    classes: list[str],
    temp: float,
    out_dir: Path,
    *,
    title: str,
    calibration: str,
    explain: Explainer | None = None,
) -> dict[str, Any]:
    """Metrics, plots and ``report.md`` for given logits (one model's, or pooled out-of-fold ones); with
    ``explain`` (one model's), the galleries of confident errors and correct answers show heatmaps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = rows.reset_index(drop=True)
    labels = rows["label_index"].to_numpy()
    tta = logits.ndim == 3
    single = logits[:, 0] if tta else logits  # view 0 is the identity
    raw, calibrated = softmax(single, 1.0), softmax(single, temp)
    res: dict[str, Any] = {
        "title": title,
        "n": len(rows),
        "temperature": temp,
        "calibration": calibration,
        "single_view": classification_metrics(labels, calibrated, classes),
        "ece_before_temperature": expected_calibration_error(raw, labels),
        "ece_after_temperature": expected_calibration_error(calibrated, labels),
    }
    curves = {"single view": calibrated}
    best = calibrated
    if tta:
        voted = np.mean([softmax(logits[:, v], temp) for v in range(logits.shape[1])], axis=0)
        res["tta"] = classification_metrics(labels, voted, classes)
        res["tta_views"] = [name for name, _ in TTA_VIEWS]
        curves["10x TTA"] = voted
        best = voted

    plot_confusion(
        np.array(res["single_view"]["confusion_matrix"]),
        classes,
        out_dir / "confusion_matrix.png",
        f"single view, bal. acc {res['single_view']['balanced_accuracy']:.3f}",
    )
    if tta:
        plot_confusion(
            np.array(res["tta"]["confusion_matrix"]),
            classes,
            out_dir / "confusion_matrix_tta.png",
            f"10x TTA, bal. acc {res['tta']['balanced_accuracy']:.3f}",
        )
    plot_roc(labels, curves, classes, out_dir / "roc.png")
    plot_reliability(labels, {"T=1": raw, f"T={temp:.2f}": calibrated}, out_dir / "reliability.png")

    pred = best.argmax(1)
    errors = rows.assign(pred=pred, confidence=best.max(1))[pred != labels].sort_values(
        "confidence", ascending=False
    )
    res["errors"] = [
        {
            "path": r["path"],
            "true": classes[r["label_index"]],
            "pred": classes[r["pred"]],
            "confidence": float(r["confidence"]),
        }
        for _, r in errors.iterrows()
    ]
    if len(errors):
        plot_gallery(errors.head(GALLERY_SIZE), out_dir / "confident_errors.png", classes, explain)
    correct = _correct_sample(rows.assign(pred=pred, confidence=best.max(1))[pred == labels], len(classes))
    if explain is not None and len(correct):
        plot_gallery(correct, out_dir / "correct_examples.png", classes, explain)

    (out_dir / "metrics.json").write_text(json.dumps(res, indent=2))
    (out_dir / "report.md").write_text(
        _markdown(res, classes, has_gallery=len(errors) > 0, has_correct=explain is not None and len(correct) > 0)
    )
    log.info("report written to %s", out_dir / "report.md")
    return res


def _correct_sample(correct: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Up to GALLERY_SIZE correct answers, as many per true class, the most confident of each: what the model
    looks at when it is right."""
    per_class = max(1, GALLERY_SIZE // n_classes)
    return (
        correct.sort_values("confidence", ascending=False).groupby("label_index", sort=True).head(per_class)
        .sort_values(["label_index", "confidence"], ascending=[True, False])
    )


def _markdown(res: dict[str, Any], classes: list[str], *, has_gallery: bool, has_correct: bool = False) -> str:
    sv = res["single_view"]
    cols = [("single view", sv)] + ([("10x TTA", res["tta"])] if "tta" in res else [])
    lines = [
        f"# Evaluation: {res['title']}",
        "",
        f"{res['n']} images; temperature {res['temperature']:.3f} ({res['calibration']}).",
        "",
        "| metric | " + " | ".join(c for c, _ in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "nll", "ece"):
        lines.append(f"| {key} | " + " | ".join(_fmt(m[key]) for _, m in cols) + " |")
    lines += [
        "",
        "## Calibration (single view)",
        "",
        "| | ECE |",
        "|---|---|",
        f"| before temperature scaling (T=1) | {res['ece_before_temperature']:.3f} |",
        f"| after temperature scaling (T={res['temperature']:.2f}) | {res['ece_after_temperature']:.3f} |",
        "",
        "![reliability](reliability.png)",
        "",
        "## Per class",
        "",
        "| class | " + " | ".join(f"{c} P | {c} R | {c} F1" for c, _ in cols) + " | support |",
        "|---|" + "---|" * (3 * len(cols) + 1),
    ]
    for cls in classes:
        cells = [f"{m['per_class'][cls][k]:.3f}" for _, m in cols for k in ("precision", "recall", "f1")]
        lines.append(f"| {cls} | " + " | ".join(cells) + f" | {sv['per_class'][cls]['support']} |")
    lines += ["", "## Confusion matrix and ROC", "", "![confusion matrix](confusion_matrix.png)"]
    if "tta" in res:
        lines.append("![confusion matrix, TTA](confusion_matrix_tta.png)")
    lines += ["![ROC](roc.png)", "", f"## Most confident errors ({len(res['errors'])} errors)", ""]
    if has_gallery:
        lines += ["![most confident errors](confident_errors.png)", ""]
        lines += [
            f"- `{e['path']}`: true {e['true']}, predicted {e['pred']} ({e['confidence']:.2f})"
            for e in res["errors"][:GALLERY_SIZE]
        ]
    else:
        lines.append("No errors.")
    if has_correct:
        lines += ["", "## Correct answers and their evidence", "",
                  "The most confident correct answers of each class, each beside the heatmap of the evidence for it.",
                  "", "![correct answers](correct_examples.png)"]
    return "\n".join(lines) + "\n"
