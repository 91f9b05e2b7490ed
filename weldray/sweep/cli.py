"""``weldray sweep`` and ``weldray sweep-best``."""

from __future__ import annotations

import typer

from weldray.cli_utils import exit_on_user_error, print_result
from weldray.ray_utils import own_ray


def sweep(
    space: str = typer.Argument(..., help="A space file: a path, or a name in tune_spaces/ (e.g. smoke)."),
    data: str | None = typer.Argument(
        None, help="Folder, s3:// URI or manifest.parquet with the labelled photos (default: procedural sample)."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="sweep.* settings (sweep.num_samples=20) and Hydra overrides fixed for every trial."
    ),
) -> None:
    """Hyperparameter search over SPACE on Ray Tune (Optuna TPE, ASHA), then k-fold CV of the best trials against
    the default; prints the sweep folder (trials.parquet, best.yaml, report.md) last. The same name resumes."""

    from weldray.sweep import run_sweep

    # `weldray sweep smoke sweep.num_samples=2`: a key=value in the DATA position is an override.
    if data is not None and "=" in data:
        data, overrides = None, [data, *(overrides or [])]
    with exit_on_user_error(), own_ray():
        sweep_dir = run_sweep(space, data, overrides or [])
    print_result(sweep_dir)


def sweep_best(
    sweep_dir: str = typer.Argument(..., help="A sweep folder written by `weldray sweep`."),
) -> None:
    """Print the overrides of the sweep's chosen configuration on one line:
    `weldray train DATA $(weldray sweep-best DIR)`."""
    with exit_on_user_error():
        from weldray.sweep.results import read_best

        best = read_best(sweep_dir)
    print(" ".join(best["overrides"]), flush=True)
