"""``weldray generate``."""

from __future__ import annotations

import typer

from weldray.cli_utils import exit_on_user_error, print_result


def generate(
    input: str = typer.Argument(..., help="Dataset folder, s3:// URI or manifest.parquet with the real photos."),
    output: str = typer.Argument(..., help="Folder or s3:// URI for the synthetic images, records and summary."),
    overrides: list[str] | None = typer.Argument(
        None, help="Hydra overrides, e.g. synthetic.n_per_class=500 training.cv_fold=0."
    ),
) -> None:
    """Make synthetic welds from the real train rows on Ray Data (synthetic.generator), gate them with a teacher,
    and write the accepted ones in the class-folder layout with their lineage (records.parquet)."""
    from rich.console import Console

    from weldray.synthetic.base import GeneratorUnavailable
    from weldray.synthetic.job import generate as run
    from weldray.synthetic.lineage import LineageError

    with exit_on_user_error():
        from weldray.config import load_config

        cfg = load_config(list(overrides or []))
    try:
        report = run(input, output, cfg, progress=True)
    except (GeneratorUnavailable, LineageError, FileNotFoundError, ImportError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    s = report.summary
    console = Console(stderr=True)
    rates = ", ".join(f"{k} {v['accepted']}/{v['generated']}" for k, v in s["acceptance"].items())
    console.print(
        f"[bold]generate[/] ({s['generator']}, {s['scope']}): {s['n_generated']} generated "
        f"({s['n_resumed']} resumed), {s['n_rejects']} rejected sources/tasks; accepted {rates}"
    )
    console.print(f"records {report.records_path}\nsheet   {report.contact_sheet_path}")
    print_result(output)


def train_lora(
    input: str = typer.Argument(..., help="Dataset folder, s3:// URI or manifest.parquet with the real photos."),
    output: str = typer.Argument(..., help="Folder for the LoRA (diffusers format) and its train_log.json."),
    overrides: list[str] | None = typer.Argument(
        None, help="Hydra overrides, e.g. synthetic.sdxl_model=/models/sdxl-turbo synthetic.lora_steps=1000."
    ),
) -> None:
    """Fine-tune a LoRA of synthetic.sdxl_model on the real train rows (training.cv_fold / holdout select them,
    as for `weldray generate`), captioned by class; use it with synthetic.lora_path=OUTPUT."""
    from weldray.text_removal.detectors import MissingWeightsError

    with exit_on_user_error():
        from weldray.config import load_config

        cfg = load_config(list(overrides or []))
    try:
        from weldray.synthetic.lora import train_lora_on_dataset

        train_lora_on_dataset(input, output, cfg)
    except (MissingWeightsError, FileNotFoundError, ImportError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    print_result(output)
