"""``MODEL_CARD.md`` beside every export: what the model classifies, what it learnt from, how well it does
on which photos, how it is calibrated, its limits, and the commands that rebuild it.

Everything in the card is read from what the export already has (the checkpoint's metadata, the training
run's ``config.yaml`` and ``metrics.json``, the sidecar's checks); a fact that is not known is said to be
unknown, never guessed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from weldray.inference.sidecar import ModelSidecar

MODEL_CARD_NAME = "MODEL_CARD.md"
#: Keys that name or place a run rather than decide its model: left out of the reproducing command.
_NOT_MODEL = ("data.root", "output_dir", "training.run_name", "ray.", "pipeline.", "serve.", "sweep.", "export.")

LIMITS = """\
- Trained on photos from one source: other cameras, lighting, weld processes or materials than those in the
  training set may be classified with confidence and still wrongly. Check a sample of your own photos with
  `weldray evaluate` before relying on it.
- It sees the whole photo at {size} px: small defects that need close inspection may not be visible at that
  size. It classifies a photo, it does not locate or measure defects (the heatmap shows evidence, not a
  measurement).
- Overlaid text (captions, marks, watermarks) should be removed with `weldray clean` as in training; text it
  never saw in training can move its answer.
- Answers below the review threshold (`needs_review`) are meant for a person to check; it is not a substitute
  for a qualified weld inspection."""


def _run_dir(source: str | Path) -> Path | None:
    p = Path(source)
    run = p if p.is_dir() else p.parent
    return run if (run / "config.yaml").is_file() else None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _override_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    return str(v)


def reproducing_overrides(run_config: dict[str, Any]) -> list[str]:
    """The ``key=value`` items that turn the run's profile defaults into its config (model-deciding keys only)."""
    from weldray.config import load_config

    profile = run_config.get("profile", "cpu")
    defaults = _flatten(load_config([f"profile={profile}"]).to_dict())
    ran = _flatten(run_config)
    items = [] if profile == "cpu" else [f"profile={profile}"]
    for key, value in ran.items():
        if key == "profile" or key.startswith(_NOT_MODEL) or key in _NOT_MODEL:
            continue
        if key not in defaults or defaults[key] != value:
            items.append(f"{key}={_override_value(value)}")
    return items


def export_overrides(export_config: dict[str, Any], profile: str) -> list[str]:
    """The ``export.*`` items of an export's config that differ from its profile's defaults."""
    from weldray.config import load_config

    defaults = _flatten(load_config([f"profile={profile}"]).to_dict()["export"], "export.")
    return [f"{k}={_override_value(v)}" for k, v in _flatten(export_config, "export.").items() if defaults.get(k) != v]


def _figure(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.3f}"


def _metrics_section(metrics: dict[str, Any]) -> list[str]:
    """Figures with the photos they were measured on: held-out rows of this run, or the CV of its recipe."""
    evaluation = metrics.get("evaluation", {})
    lines = []
    test = metrics.get("test", {}).get("single_view")
    if test:
        lines.append(
            f"- On {test['n']} held-out photos ({metrics.get('data', 'held-out rows')}): balanced accuracy "
            f"{_figure(test.get('balanced_accuracy'))}, accuracy {_figure(test.get('accuracy'))}, ROC-AUC "
            f"{_figure(test.get('roc_auc'))}, expected calibration error {_figure(test.get('ece'))}."
        )
    oof = evaluation.get("oof")
    if oof:
        lines.append(
            f"- {evaluation['source']} ({oof.get('n', '?')} photos, each predicted by a model that never saw "
            f"it): balanced accuracy {_figure(oof.get('balanced_accuracy'))}, ROC-AUC {_figure(oof.get('roc_auc'))}, "
            f"calibration error after temperature scaling {_figure(oof.get('ece'))}. These are the figures of "
            "this recipe; the model itself trained on every photo, so no photo of the training set measures it."
        )
    if not lines:
        lines.append(
            "- **Unknown.** This model was trained on every labelled photo and no cross-validation of its recipe "
            "was found: run `weldray cv DATA` with the same overrides, then train and export again."
        )
    return lines


def _ensemble_figures(configs: list[dict[str, Any] | None]) -> str:
    """What measures an ensemble: the outer CV of the same ensemble of seeds (``weldray cv --seeds``) if run."""
    from weldray.config import WeldrayConfig
    from weldray.training.cv import seed_ensemble_summary

    summary = None if None in configs else seed_ensemble_summary([_as_config(c, WeldrayConfig) for c in configs])
    if summary is None:
        return (
            "- An ensemble's own accuracy is not measured by its members' figures below: each member's figures are "
            "of its own recipe. For the final fits of consecutive seeds, `weldray cv DATA --seeds N` with the same "
            "overrides measures the ensemble (docs/training.md)."
        )
    oof = summary["oof"]
    return (
        f"- This ensemble's recipe, by the outer cross-validation of the same ensemble of {len(summary['members'])} "
        f"seeds (`{summary['path']}`; every member of a fold's ensemble trained without that fold): balanced "
        f"accuracy {_figure(summary['balanced_accuracy_mean'])} ± {_figure(summary['balanced_accuracy_std'])} over "
        f"{len(summary['folds'])} folds (one seed alone: {_figure(summary['member_balanced_accuracy_mean'])}); "
        f"pooled out-of-fold balanced accuracy {_figure(oof.get('balanced_accuracy'))}, ROC-AUC "
        f"{_figure(oof.get('roc_auc'))}. The first member's own figures follow."
    )


def model_card(
    sources: Sequence[str | Path],
    sidecar: ModelSidecar,
    artefacts: dict[str, str],
    report: dict[str, Any],
    export_args: Sequence[str] = (),
) -> str:
    """The card's Markdown for an export of ``sources`` (one run, or the members of an ensemble)."""
    runs = [_run_dir(s) for s in sources]
    configs = [yaml.safe_load((r / "config.yaml").read_text()) if r else None for r in runs]
    metrics = [json.loads((r / "metrics.json").read_text()) if r and (r / "metrics.json").is_file() else {}
               for r in runs]
    first_cfg, first_metrics = configs[0] or {}, metrics[0]
    size = sidecar.input_size
    lines = [f"# Model card: {sidecar.run_id or 'weldray classifier'}", ""]
    lines += [
        "## What it does",
        "",
        f"Classifies a photo of a weld as one of {', '.join(f'`{c}`' for c in sidecar.classes)}, with class "
        f"probabilities (temperature {sidecar.temperature:.3g}: see Calibration) and a `needs_review` flag for low "
        "confidence. Input: "
        f"an RGB photo (JPEG, PNG, TIFF, WebP, BMP), resized by weldray's policy to {size} x {size} px "
        f"({sidecar.preprocessing.get('resize', 'shared resize policy')}).",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | `{sidecar.backbone or 'unknown'}` |",
        f"| head | `{(first_cfg.get('model') or {}).get('head', 'unknown')}` |",
        f"| members | {len(sidecar.members) or 1}"
        + (" (ensemble: mean of calibrated probabilities) |" if sidecar.members else " |"),
        f"| files | {', '.join(f'`{Path(p).name}` ({k})' for k, p in artefacts.items())} |",
        f"| created | {sidecar.created} |",
        "",
        "## Training data",
        "",
    ]
    for i, (run, m) in enumerate(zip(runs, metrics, strict=True)):
        label = f"Member {i + 1} (`{run}`)" if len(runs) > 1 else f"Run `{run}`"
        if not m:
            lines.append(f"- {label}: its training record (metrics.json) is not available.")
            continue
        synthetic = m.get("n_train_synthetic", 0)
        share = f", of which {synthetic} synthetic ({synthetic / max(1, m['n_train']):.0%})" if synthetic else ""
        lines.append(
            f"- {label}: {m['n_train']} training images{share}, {m.get('n_val', 0)} validation, "
            f"{m.get('n_test', 0)} held out ({m.get('data', '')})."
        )
    manifest = first_metrics.get("manifest")
    counts = _class_counts(manifest)
    lines += [
        f"- Dataset: `{(first_cfg.get('data') or {}).get('root') or 'procedural sample'}`, manifest `{manifest}` "
        f"(sha256 `{sidecar.manifest_sha256[:16] or 'unknown'}`)"
        + (f": {', '.join(f'{n} {c}' for c, n in counts.items())}." if counts else "."),
        "",
        "## Recipe",
        "",
    ]
    training = first_cfg.get("training") or {}
    recipe_keys = ("epochs", "batch_size", "lr", "optimizer", "image_sizes", "mixup_prob", "label_smoothing",
                   "ema_decay", "mix_real_ratio")
    lines.append("- " + ", ".join(f"{k} {_override_value(training[k])}" for k in recipe_keys if k in training))
    if first_cfg:
        from weldray.config import WeldrayConfig
        from weldray.training.cv import recipe_fingerprint

        lines.append(f"- Recipe hash: `{recipe_fingerprint(_as_config(first_cfg, WeldrayConfig))}` "
                     "(data, model, training recipe and seed; equal for a CV and the final fit of one command).")
    lines += ["", "## How well it does", ""]
    if len(runs) > 1:
        lines.append(_ensemble_figures(configs))
    lines += _metrics_section(first_metrics)
    lines += ["", "## Calibration and export checks", ""]
    lines.append(f"- Temperature {sidecar.temperature:.3g}: "
                 f"{first_metrics.get('calibration') or 'per member, applied inside the graph'}.")
    vs_torch = report.get("onnx_vs_torch")
    if vs_torch:
        lines.append(f"- ONNX fp32 vs PyTorch: argmax agreement {vs_torch['argmax_agreement']:.2%} on "
                     f"{vs_torch['n']} real images (`{report.get('check_images')}`), max |dp| "
                     f"{vs_torch['max_abs_prob_diff']:.2g}.")
    gate = report.get("int8", {}).get("gate")
    if gate:
        lines.append(
            f"- INT8 ({report['int8']['float_layers']} leading layers in float): agreement with fp32 "
            f"{gate['agreement']:.2%} on {gate['n_images']} photos not used for calibration (gate "
            f"{gate['min_agreement']:.0%}); {gate['b1_latency_ms']:.1f} ms vs fp32 {gate['fp32_b1_latency_ms']:.1f} "
            "ms per image at export time."
        )
    lines += ["", "## Intended use and known limits", "",
              "Intended use: screening weld photos like the training photos, with people reviewing flagged answers.",
              "", LIMITS.format(size=size), "", "## Reproduce", "", "```bash"]
    for run, cfg in zip(runs, configs, strict=True):
        if cfg is None:
            lines.append(f"# {run}: no config.yaml beside the checkpoint; its command is unknown")
            continue
        data = (cfg.get("data") or {}).get("root") or ""
        lines.append(shlex.join(["weldray", "train", *([data] if data else []), *reproducing_overrides(cfg)]))
    lines.append(shlex.join(["weldray", "export", *[str(r or s) for r, s in zip(runs, sources, strict=True)],
                             *(["--format", sidecar.precision] if sidecar.precision == "int8" else []),
                             *export_args]))
    lines += ["```", ""]
    return "\n".join(lines)


def _as_config(raw: dict[str, Any], schema: type) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))


def _class_counts(manifest: str | None) -> dict[str, int]:
    if not manifest or not Path(manifest).is_file():
        return {}
    import pandas as pd

    return {str(k): int(v) for k, v in pd.read_parquet(manifest, columns=["label"])["label"].value_counts().items()}


def write_model_card(directory: str | Path, text: str) -> Path:
    path = Path(directory) / MODEL_CARD_NAME
    path.write_text(text)
    return path
