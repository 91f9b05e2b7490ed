"""``weldray pipeline``."""

from __future__ import annotations

from typing import Optional

import typer

from weldray.cli_utils import exit_on_user_error, print_result


def pipeline(
    args: Optional[list[str]] = typer.Argument(
        None, help="[DATA] [key=value ...]: a folder, s3:// URI or manifest (default: the procedural sample), "
        "then Hydra overrides such as profile=quick_test or pipeline.stages=[train,evaluate,export]."
    ),
) -> None:
    """Run clean -> ingest -> train -> evaluate -> export; print the run directory (model + report)."""
    from weldray.pipeline import StageError, run_pipeline, split_args

    with exit_on_user_error():
        try:
            run_dir = run_pipeline(split_args(args or []))
        except StageError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1) from None
    print_result(run_dir)
