"""Small helpers shared by the stage commands."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer


@contextlib.contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Turn a ConfigError into a one-line message and exit code 2 instead of a traceback."""
    from weldray.config import ConfigError

    try:
        yield
    except ConfigError as exc:
        typer.secho(f"config error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def print_result(path: str | Path) -> None:
    """The command's main result, as the last stdout line."""
    sys.stdout.flush()
    print(str(path), flush=True)
