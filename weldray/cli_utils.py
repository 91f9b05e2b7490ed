"""Small helpers shared by the stage commands."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Errors a user causes and fixes end in one line and a non-zero exit instead of a traceback: a bad
    config (exit 2), a missing file such as a data root or weights (exit 1). Both are raised before Ray
    or any worker starts (config validation, ``preflight`` checks on the driver), so they print once."""
    from weldray.config import ConfigError

    try:
        yield
    except ConfigError as exc:
        typer.secho(f"config error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def print_result(path: str | Path) -> None:
    """The command's main result, as the last stdout line."""
    sys.stdout.flush()
    print(str(path), flush=True)
