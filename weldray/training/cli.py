"""``weldray train`` and ``weldray evaluate``."""

from __future__ import annotations

import typer

from weldray.cli_utils import exit_on_user_error, print_result
from weldray.ray_utils import own_ray


def train(
    data: str = typer.Argument(..., help="Folder, s3:// URI or manifest.parquet with the labelled photos."),
    overrides: list[str] | None = typer.Argument(None, help="Hydra overrides, e.g. training.epochs=20."),
    seeds: int = typer.Option(
        1, min=1, help="Train this many seeds (seed, seed+1, ...) one after another and export them as one ONNX "
        "graph (export.format) that averages their calibrated probabilities; `weldray cv DATA --seeds N` measures it.",
    ),
) -> None:
    """Train a classifier on DATA with Ray Train; prints the run directory last (with --seeds, the ensemble's
    ONNX model)."""

    from weldray.config import load_config
    from weldray.training import train as run_train
    from weldray.training import train_seed_ensemble
    from weldray.training.cv import seed_ensemble_name

    with exit_on_user_error(), own_ray():
        cfg = load_config([*(overrides or []), f"data.root={data}"])
        if seeds == 1:
            run_dir = run_train(cfg)
        else:
            ensemble = train_seed_ensemble(cfg, seeds)
    if seeds == 1:
        print_result(run_dir)
        return
    for run in ensemble.runs:
        print(f"member: {run}")
    measured = ensemble.cv_summary
    print(
        f"ensemble of {seeds} seeds, by the outer CV: balanced accuracy {measured['balanced_accuracy_mean']:.3f} "
        f"(one seed alone {measured['member_balanced_accuracy_mean']:.3f}), {measured['path']}"
        if measured
        else f"ensemble of {seeds} seeds: not cross-validated ({seed_ensemble_name(cfg, seeds)} not found); "
        f"`weldray cv DATA --seeds {seeds}` with the same overrides measures it"
    )
    print_result(ensemble.export.path)


def evaluate(
    run_dir: str = typer.Argument(
        ..., help="A run directory written by `weldray train` (holds model.pt), or an exported .onnx model "
        "(one model or an ensemble, fp32 or INT8), evaluated as it is served.",
    ),
    data: str = typer.Argument(..., help="Folder, s3:// URI or manifest.parquet to evaluate on."),
    overrides: list[str] | None = typer.Argument(None, help="Hydra overrides, e.g. training.tta=true."),
) -> None:
    """Write the evaluation report of RUN_DIR's model (or an exported .onnx model) on DATA; prints the report
    path last."""
    with exit_on_user_error():
        from weldray.config import load_config
        from weldray.evaluation import evaluate as run_evaluate

        cfg = load_config([*(overrides or []), f"data.root={data}"])
        report = run_evaluate(run_dir, cfg)
    print_result(report)


def cv(
    data: str = typer.Argument(..., help="Folder, s3:// URI or manifest.parquet with the labelled photos."),
    overrides: list[str] | None = typer.Argument(None, help="Hydra overrides, e.g. training.epochs=20."),
    folds: str | None = typer.Option(None, help="Comma list of folds to run (default: all data.n_folds)."),
    name: str | None = typer.Option(None, help="Name of the CV run (default: cv-<config hash>)."),
    ensemble: bool = typer.Option(
        False, "--ensemble", help="Also export the fold models as one ONNX graph (mean calibrated probabilities)."
    ),
    seeds: int = typer.Option(
        1, min=1, help="Cross-validate the ensemble of this many seeds (seed, seed+1, ...): one CV per seed, "
        "finished ones reused, and the ensemble's out-of-fold figures.",
    ),
) -> None:
    """K-fold group cross-validation: one `weldray train` run per fold, each fold held out once;
    prints per-fold and mean balanced accuracy, and the summary JSON path last."""

    from weldray.config import load_config
    from weldray.training import cross_validate
    from weldray.training.cv import export_fold_ensemble

    if ensemble and seeds > 1:
        raise typer.BadParameter(
            "--ensemble exports one CV's fold models; run it without --seeds", param_hint="--ensemble"
        )
    with exit_on_user_error():
        with own_ray():
            cfg = load_config([*(overrides or []), f"data.root={data}"])
            summary = cross_validate(
                cfg, [int(f) for f in folds.split(",")] if folds else None, name=name, seeds=seeds
            )
        result = export_fold_ensemble(cfg, summary) if ensemble else None
    for row in summary["folds"]:
        members = row.get("member_balanced_accuracy")
        of_members = f"  (its {len(members)} seeds: {' '.join(f'{b:.3f}' for b in members)})" if members else ""
        tta = f"  with TTA {row['tta_balanced_accuracy']:.3f}" if "tta_balanced_accuracy" in row else ""
        print(
            f"fold {row['fold']}: balanced accuracy {row['balanced_accuracy']:.3f}  ROC-AUC {row['roc_auc']:.3f}"
            + tta + of_members
        )
    print(
        f"mean balanced accuracy {summary['balanced_accuracy_mean']:.3f} "
        f"+- {summary['balanced_accuracy_std']:.3f} over {len(summary['folds'])} folds"
        + (f" (a seed alone: {summary['member_balanced_accuracy_mean']:.3f})" if seeds > 1 else "")
        + (f"; with TTA {summary['tta_balanced_accuracy_mean']:.3f}" if "tta_balanced_accuracy_mean" in summary else "")
    )
    if result is not None:
        print(f"summary: {summary['path']}")
        print(f"ensemble of {len(summary['folds'])} fold models (its accuracy is not the CV's): {result.path}")
    print_result(str(result.path) if result is not None else summary["path"])
