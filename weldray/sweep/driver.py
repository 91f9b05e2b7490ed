"""``weldray sweep``: validate the space, run (or continue) the search, confirm by cross-validation, write
``outputs/sweeps/<name>/`` (trials.parquet/.csv, best.yaml, report.md + PNGs)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weldray.config import load_config
from weldray.sweep.space import Study, load_space

log = logging.getLogger(__name__)


def _chosen(study: Study, table: Any, confirmation: dict[str, Any] | None, data_root: str) -> dict[str, Any]:
    from weldray.sweep.confirm import DEFAULT
    from weldray.sweep.results import ranked, trial_params

    best = ranked(table, study)
    if confirmation is not None:
        label = confirmation["winner"]
        reason = confirmation["verdict"]
    elif not best.empty:
        label, reason = best.iloc[0]["trial"], f"best {study.sweep.metric} of the search, not confirmed (sweep.top_k=0)"
    else:
        label, reason = DEFAULT, "no trial reported the metric"
    doc: dict[str, Any] = {"sweep": study.name, "chosen": label, "reason": reason}
    if label == DEFAULT:
        doc["overrides"] = list(study.overrides)
    else:
        row = table.set_index("trial").loc[label]
        doc["overrides"] = study.trial_overrides(trial_params(row, study))
        doc["trial_metric"] = {study.sweep.metric: float(row[study.sweep.metric])}
        doc["run_dir"] = row["run_dir"]
    if confirmation is not None:
        cand = next(c for c in confirmation["candidates"] if c["label"] == label)
        doc["cv"] = {
            "folds": confirmation["folds"],
            "balanced_accuracy_mean": round(cand["mean"], 4),
            "balanced_accuracy_std": round(cand["std"], 4),
            "mean_paired_diff_vs_default": round(cand["mean_diff"], 4),
        }
    doc["data"] = data_root
    return doc


def run_sweep(
    space: str, data: str | None = None, overrides: Sequence[str] = (), *, root: Path | None = None
) -> Path:
    """Run the study in SPACE on DATA (None: the procedural sample); returns the sweep folder, ``<root>/<name>``
    (``root`` default: ``<output_dir>/sweeps``; the pipeline's sweep stage keeps it in its run folder).
    Re-running with the same name continues it: finished trials and finished confirmations are kept."""
    from weldray.data import resolve_dataset
    from weldray.ray_utils import init_ray
    from weldray.sweep.confirm import candidate_overrides, compare, cross_validate_candidates
    from weldray.sweep.results import optuna_study, plots, ranked, trials_table, write_best, write_report
    from weldray.sweep.run import check_same_study, run_search, study_record, sweep_dir_for
    from weldray.sweep.tracking import tracker_callbacks
    from weldray.training.trainer import initial_model

    t0 = time.perf_counter()
    study = load_space(space, overrides)
    base = load_config([*study.overrides, *([f"data.root={data}"] if data else [])])
    # Everything a user can get wrong is checked here, before Ray: the data (ingested once, shared by every
    # trial and fold as one manifest) and the pretrained weights.
    data_root = str(resolve_dataset(base, progress=True).resolve())
    initial_model(base, base.data.labels)
    sweep_dir = sweep_dir_for(study, root)
    record = study_record(study, data_root)
    check_same_study(sweep_dir, record)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "study.json").write_text(json.dumps(record, indent=2))

    callbacks = tracker_callbacks(study, sweep_dir)
    init_ray(base.ray, job_name="sweep")
    grid = run_search(study, data_root, sweep_dir, callbacks)
    table = trials_table(grid, study, sweep_dir, base.training.epochs)
    table.to_parquet(sweep_dir / "trials.parquet", index=False)
    table.to_csv(sweep_dir / "trials.csv", index=False)
    log.info("search done: %s", table["status"].value_counts().to_dict() if not table.empty else "no trials")

    if ranked(table, study).empty:
        errors = table["error"].dropna().tolist() if not table.empty else []
        raise RuntimeError(
            f"no trial of sweep {study.name} reported {study.sweep.metric} (see {sweep_dir / 'trials.csv'})"
            + (f"; first error: {errors[0]}" if errors else "")
        )
    figures = plots(optuna_study(table, study), sweep_dir)
    confirmation = None
    if study.sweep.top_k > 0:
        candidates = candidate_overrides(study, table, study.sweep.top_k)
        scores = cross_validate_candidates(study, candidates, data_root, sweep_dir)
        folds = study.sweep.confirm_folds or list(range(base.data.n_folds))
        confirmation = compare(scores, folds)
        (sweep_dir / "confirmation.json").write_text(json.dumps(confirmation, indent=2))
        log.info(confirmation["verdict"])
    chosen = _chosen(study, table, confirmation, data_root)
    write_best(sweep_dir, study, chosen)
    write_report(sweep_dir, study, table, figures, confirmation, chosen)
    log.info("sweep %s done in %.0f s", study.name, time.perf_counter() - t0)
    return sweep_dir
