"""``weldray ingest``."""

from __future__ import annotations

from typing import Optional

import typer

from weldray.cli_utils import exit_on_user_error, print_result


def ingest(
    data: str = typer.Argument(
        ..., help="Folder or s3:// URI with one sub-folder per class (good_welds/, bad_welds/)."
    ),
    overrides: Optional[list[str]] = typer.Argument(None, help="Hydra overrides, e.g. data.n_folds=5."),
) -> None:
    """Scan DATA, write manifest.parquet, rejects.parquet and the split report; print a summary."""
    from rich.console import Console

    from weldray.data import ingest as run_ingest
    from weldray.data.report import render_summary

    with exit_on_user_error():
        from weldray.config import load_config

        cfg = load_config([*(overrides or []), f"data.root={data}"])
    result = run_ingest(data, cfg, progress=True)
    render_summary(result, Console(stderr=True))
    print_result(result.manifest_dir)
