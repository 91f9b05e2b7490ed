"""A finished search as files: ``trials.parquet``/``trials.csv``, Optuna's plots, ``best.yaml``, ``report.md``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from weldray.sweep.space import Study

log = logging.getLogger(__name__)

#: Per-epoch metrics kept in a trial's ``history`` (JSON list of dicts, one per epoch).
HISTORY_KEYS = ("epochs_done", "train_loss", "val_loss", "val_bal_acc", "val_loss_best", "val_bal_acc_best")
PARAM_PREFIX = "param."


def trials_table(grid: Any, study: Study, sweep_dir: Path, epochs: int) -> pd.DataFrame:
    """One row per trial: parameters (``param.<key>``), status (completed / stopped_asha / early_stopped / error /
    not_started), epochs run, last and per-epoch metrics, wall time, run and trial folders. ``epochs``: a trial's
    full length unless it searches ``training.epochs``."""
    from weldray.sweep.run import TIME_ATTR

    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial = Path(result.path).name
        done = int(metrics.get(TIME_ATTR, 0) or 0)
        if result.error is not None:
            status = "error"
        elif done == 0:
            status = "not_started"
        elif done >= int(result.config.get("training.epochs", epochs)):
            status = "completed"
        elif metrics.get("early_stopped"):
            status = "early_stopped"
        else:
            status = "stopped_asha"
        history = _history(result, sweep_dir / "runs" / trial)
        row = {
            "trial": trial,
            "status": status,
            **{f"{PARAM_PREFIX}{k}": result.config.get(k) for k in study.space},
            "epochs_done": done,
            study.sweep.metric: metrics.get(study.sweep.metric, math.nan),
            **{k: metrics.get(k, math.nan) for k in ("val_loss", "val_bal_acc", "val_loss_best", "val_bal_acc_best")},
            "wall_s": round(float(metrics.get("time_total_s", 0.0) or 0.0), 1),
            # Unix time the trial started (its last report's time less its run time): the order of the search.
            "started": float(metrics.get("timestamp", 0) or 0) - float(metrics.get("time_total_s", 0.0) or 0.0),
            "history": json.dumps(history),
            "error": None if result.error is None else str(result.error).splitlines()[0][:300],
            "run_dir": str(sweep_dir / "runs" / trial),
            "trial_dir": str(result.path),
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["started", "trial"]).reset_index(drop=True) if not table.empty else table


def _history(result: Any, run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a trial: its run's own record when it finished (complete even when a killed sweep
    resumed the run midway, which restarts Tune's record of the trial), else what it reported to Tune."""
    from weldray.sweep.run import TIME_ATTR

    summary = run_dir / "metrics.json"
    if summary.is_file():
        rows = [{**h, TIME_ATTR: h["epoch"] + 1} for h in json.loads(summary.read_text())["history"]]
    else:
        frame = result.metrics_dataframe
        rows = [] if frame is None or frame.empty else frame.to_dict("records")
    return [{k: row[k] for k in HISTORY_KEYS if k in row} for row in rows]


def trial_params(row: pd.Series, study: Study) -> dict[str, Any]:
    """The sampled values of one row of the trials table, as Python scalars."""
    out = {}
    for key, dist in study.space.items():
        value = row[f"{PARAM_PREFIX}{key}"]
        value = value.item() if hasattr(value, "item") else value
        out[key] = int(value) if dist.type == "int" else value
    return out


def ranked(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Trials with a value of the metric, best first."""
    metric = study.sweep.metric
    done = table[table["status"].ne("error") & table[metric].notna()] if not table.empty else table
    return done.sort_values(metric, ascending=study.sweep.mode == "min", kind="stable")


def optuna_study(table: pd.DataFrame, study: Study) -> Any:
    """The trials as an Optuna study (for its plots), rebuilt from the table so a resumed sweep plots all of
    them: value = the metric a trial ended with, intermediate values = the metric per epoch."""
    import optuna

    direction = "minimize" if study.sweep.mode == "min" else "maximize"
    ostudy = optuna.create_study(direction=direction, study_name=study.name)
    dists = {k: d.optuna_distribution() for k, d in study.space.items()}
    for _, row in ranked(table, study).sort_values(["started", "trial"]).iterrows():
        steps = {
            int(h["epochs_done"]): float(h[study.sweep.metric])
            for h in json.loads(row["history"])
            if study.sweep.metric in h and not math.isnan(h[study.sweep.metric])
        }
        ostudy.add_trial(
            optuna.trial.create_trial(
                params=trial_params(row, study),
                distributions=dists,
                value=float(row[study.sweep.metric]),
                intermediate_values=steps,
                user_attrs={"trial": row["trial"], "status": row["status"]},
            )
        )
    return ostudy


def plots(ostudy: Any, out_dir: Path) -> dict[str, str]:
    """Optuna's matplotlib figures as PNGs; ``{title: file name, or the reason it could not be drawn}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "optimisation history": ("history.png", ovm.plot_optimization_history),
        "parameter importances": ("importances.png", ovm.plot_param_importances),
        "parallel coordinates": ("parallel_coordinates.png", ovm.plot_parallel_coordinate),
        "slices (metric per parameter value)": ("slices.png", ovm.plot_slice),
    }
    done: dict[str, str] = {}
    for title, (name, draw) in figures.items():
        try:
            axes = draw(ostudy)
        except Exception as exc:  # noqa: BLE001 - a figure Optuna cannot draw (too few trials) is reported, not fatal
            done[title] = f"not drawn: {exc}"
            continue
        first = np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes
        first.figure.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(first.figure)
        done[title] = name
    return done


def write_best(sweep_dir: Path, study: Study, chosen: dict[str, Any]) -> Path:
    """``best.yaml``: the chosen configuration's overrides (``weldray sweep-best DIR`` prints them on one line for
    ``weldray train DATA $(weldray sweep-best DIR)``), what chose it, and the data the sweep ran on."""
    import yaml

    path = sweep_dir / "best.yaml"
    header = (
        f"# weldray sweep {study.name}: the configuration to train with.\n"
        "# overrides: the Hydra overrides of that configuration (the space's fixed ones, then its searched values).\n"
        "# Train it: weldray train DATA $(weldray sweep-best <this folder>)\n"
    )
    path.write_text(header + yaml.safe_dump(chosen, sort_keys=False))
    return path


def read_best(sweep_dir: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(sweep_dir) / "best.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a finished sweep folder")
    return yaml.safe_load(path.read_text())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_report(
    sweep_dir: Path,
    study: Study,
    table: pd.DataFrame,
    figures: dict[str, str],
    confirmation: dict[str, Any] | None,
    chosen: dict[str, Any],
) -> Path:
    """``report.md``: counts, the trials best first, the plots, the confirmation table and its verdict."""
    metric, counts = study.sweep.metric, table["status"].value_counts().to_dict() if not table.empty else {}
    hours = table["wall_s"].sum() / 3600 if not table.empty else 0.0
    lines = [
        f"# Sweep `{study.name}`",
        "",
        f"Space `{study.path}`; fixed overrides `{' '.join(study.overrides) or '(none)'}`; "
        f"metric `{metric}` ({study.sweep.mode}); scheduler {study.sweep.scheduler}"
        + (
            f" (grace {study.sweep.grace_period} epochs, reduction factor {study.sweep.reduction_factor})"
            if study.sweep.scheduler == "asha"
            else ""
        )
        + f"; TPE seed {study.sweep.seed}.",
        "",
        f"{len(table)} trials: "
        + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
        + (f"; {len(table) / hours:.1f} trials per hour of trial time." if hours > 0 else "."),
        "",
        "## Trials, best first",
        "",
        "Validation figures are on the manifest's val rows, which every trial holds out: a few dozen photos, so the "
        "best of many trials flatters itself. The confirmation below is what decides.",
        "",
    ]
    cols = ["trial", "status", *(f"{PARAM_PREFIX}{k}" for k in study.space), "epochs_done", metric, "wall_s"]
    cols = list(dict.fromkeys(cols))
    best_first = pd.concat([ranked(table, study), table[~table.index.isin(ranked(table, study).index)]])
    lines += [markdown_table(best_first[cols]), ""]
    lines += ["## Search plots", ""]
    for title, name in figures.items():
        lines += [f"![{title}]({name})" if name.endswith(".png") else f"- {title}: {name}", ""]
    lines += ["## Confirmation by cross-validation", ""]
    if confirmation is None:
        lines += [f"Not run (sweep.top_k=0): `best.yaml` is the best trial by {metric}, unconfirmed.", ""]
    else:
        rows = [
            {
                "candidate": c["label"],
                "CV balanced accuracy": f"{c['mean']:.3f} +- {c['std']:.3f}",
                "per fold": " ".join(f"{v:.3f}" for v in c["per_fold"]),
                "paired diff vs default per fold": " ".join(f"{d:+.3f}" for d in c["diff"]),
                "mean diff +- SE": f"{c['mean_diff']:+.3f} +- {c['se_diff']:.3f}",
                "beats default": "yes" if c["beats_default"] else "no",
            }
            for c in confirmation["candidates"]
        ]
        lines += [
            f"Each candidate (the top {study.sweep.top_k} trials and the space's default) trained once per fold of "
            f"the manifest's group folds {confirmation['folds']} (same folds, same seed, every row outside the "
            "fold), scored on the held-out fold. A candidate beats the default when its mean paired difference is "
            "above zero by more than two standard errors of the per-fold differences.",
            "",
            markdown_table(pd.DataFrame(rows)),
            "",
            f"**{confirmation['verdict']}**",
            "",
        ]
    lines += [
        "## best.yaml",
        "",
        f"Chosen: `{chosen['chosen']}`" + (f" ({chosen['reason']})" if confirmation is None else "")
        + ". Train it with "
        f"`weldray train DATA $(weldray sweep-best {sweep_dir})`, "
        f"i.e. `{' '.join(chosen['overrides']) or '(defaults)'}`.",
        "",
        "Files: `trials.parquet` / `trials.csv` (one row per trial, per-epoch metrics in `history`), "
        "Tune's experiment in `tune/`, each trial's run (config.yaml, TensorBoard, model.pt) in `runs/<trial>/`.",
        "",
    ]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
