"""The ``weldray`` command. Each stage keeps its commands in its own module and registers them here.

Shape: ``weldray <stage> ARGS... [key=value ...]``; the trailing ``key=value`` items are Hydra
overrides. A command prints its main result path as its last stdout line (scripts rely on it).
"""

from __future__ import annotations

import logging

import typer

from weldray.data.cli import ingest

app = typer.Typer(
    name="weldray",
    help="Weld photos -> text removal -> training -> export -> serving, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
    )


# Stage commands: one line per command.
app.command(context_settings={"allow_extra_args": False})(ingest)
