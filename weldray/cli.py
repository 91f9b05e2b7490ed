"""The ``weldray`` command. Each stage keeps its commands in its own module and registers them here.

Shape: ``weldray <stage> ARGS... [key=value ...]``; the trailing ``key=value`` items are Hydra
overrides. A command prints its main result path as its last stdout line (scripts rely on it).
"""

from __future__ import annotations

import typer

from weldray.cluster.cli import cluster_app, submit
from weldray.data.cli import ingest
from weldray.export.cli import export
from weldray.inference.cli import predict, serve
from weldray.pipeline_cli import pipeline
from weldray.pretrain.cli import pretrain
from weldray.sweep.cli import sweep, sweep_best
from weldray.synthetic.cli import generate, train_lora
from weldray.text_removal.cli import clean, train_segmenter
from weldray.training.cli import cv, evaluate, train

app = typer.Typer(
    name="weldray",
    help="Weld photos -> text removal -> training -> export -> serving, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging, and Ray's own logs (workers, Ray Data) on the console."
    ),
) -> None:
    from weldray.logs import setup

    setup(verbose)


# Commands in pipeline order; one line per command.
for command in (ingest, clean, train_segmenter, train_lora, generate, pretrain, train, cv, evaluate, export, predict,
                serve, pipeline, submit):
    app.command()(command)
app.command()(sweep)
app.command(name="sweep-best")(sweep_best)
app.add_typer(cluster_app, name="cluster")
