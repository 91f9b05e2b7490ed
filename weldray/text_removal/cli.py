"""``weldray clean``."""

from __future__ import annotations

import typer

from weldray.cli_utils import exit_on_user_error, print_result


def clean(
    input: str = typer.Argument(
        ..., help="Folder or s3:// URI with the photos (class sub-folders are kept)."
    ),
    output: str = typer.Argument(
        ..., help="Folder or s3:// URI for cleaned images, masks, records and the audit."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Hydra overrides, e.g. text_removal.inpainter=lama."
    ),
) -> None:
    """Detect and inpaint text in every image on Ray Data, then audit the result (residual text, contact sheet)."""
    from rich.console import Console

    from weldray.text_removal.detectors import MissingWeightsError
    from weldray.text_removal.pipeline import clean_dataset

    with exit_on_user_error():
        from weldray.config import load_config

        cfg = load_config(list(overrides or []))
    try:
        report = clean_dataset(input, output, cfg, progress=True)
    except (MissingWeightsError, FileNotFoundError, ImportError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    s = report.summary
    console = Console(stderr=True)
    console.print(
        f"[bold]text removal[/]: {s['n_cleaned']} cleaned ({s['n_resumed']} resumed), {s['n_rejects']} rejected, "
        f"text in {s['n_with_text']} images; residual text in {s['n_with_residual_text']} of {s['audited']} audited"
    )
    console.print(
        f"records {report.records_path}\naudit   {report.audit_path}\nsheet   {report.contact_sheet_path}"
    )
    print_result(output)


def train_segmenter(
    output: str = typer.Argument(..., help="Weights file to write, e.g. textseg.pt."),
    renders: int = typer.Option(2400, help="Procedural training renders (2 crops each)."),
    steps: int = typer.Option(3000, help="Optimiser steps (batch 16)."),
    backgrounds: str | None = typer.Option(
        None, help="Folder of real photos: those where OCR finds no text become backgrounds for composited text."
    ),
    background_fraction: float = typer.Option(0.6, help="Share of renders drawn on a real background."),
    holdout: float = typer.Option(
        0.0, help="Share of the text-free photos kept out of training (validation renders and false-positive checks)."
    ),
    workers: int = typer.Option(2, help="Render processes."),
) -> None:
    """Train the text segmenter (text_removal.segmenter=textseg) on procedural text with exact glyph masks."""
    import json

    from weldray.text_removal.segmenter_train import SegmenterTrainConfig
    from weldray.text_removal.segmenter_train import train_segmenter as run

    try:
        cfg = SegmenterTrainConfig(
            renders=renders,
            steps=steps,
            backgrounds=backgrounds,
            background_fraction=background_fraction,
            background_holdout=holdout,
            workers=workers,
        )
    except ValueError as exc:
        typer.secho(f"config error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        meta = run(output, cfg, progress=True)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({k: v for k, v in meta.items() if k != "config"}), err=True)
    print_result(output)
