"""``weldray export``."""

from __future__ import annotations

import typer

from weldray.cli_utils import exit_on_user_error, print_result


def export(
    sources: list[str] = typer.Argument(
        ...,
        help="Training run directory (holding model.pt) or checkpoint file; several export one ensemble graph "
        "(mean of their calibrated probabilities). key=value items are Hydra overrides, e.g. export.check_images=DIR.",
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", help="fp32 ONNX path (INT8/TensorRT go beside it)."
    ),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="onnx | int8 | tensorrt (default export.format)."
    ),
) -> None:
    """Export a checkpoint (or an ensemble of several) to ONNX (+ static INT8 or a TensorRT engine), checked
    against it on real images."""
    import re
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from weldray.export import NoCheckImagesError, ParityError, TensorRTUnavailableError, export_checkpoint

    overrides = [i for i in sources if re.fullmatch(r"[A-Za-z_][\w.]*=.*", i) and not Path(i).exists()]
    with exit_on_user_error():
        from weldray.config import load_config

        cfg = load_config(overrides)
    try:
        result = export_checkpoint([s for s in sources if s not in overrides], cfg, fmt=fmt, output=output)
    except (TensorRTUnavailableError, ParityError, NoCheckImagesError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"export failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"export {result.format}: checks on {result.report['n_check_images']} real images")
    for col in ("comparison", "argmax agreement", "max |dp|", "notes"):
        table.add_column(col)
    r = result.report
    table.add_row(
        "ONNX fp32 vs PyTorch",
        f"{r['onnx_vs_torch']['argmax_agreement']:.2%}",
        f"{r['onnx_vs_torch']['max_abs_prob_diff']:.2e}",
        f"{r['fp32_size_mb']:.1f} MB",
    )
    if "int8" in r:
        q, gate = r["int8"], r["int8"]["gate"]
        table.add_row(
            "ONNX INT8 vs fp32",
            f"{q['vs_fp32']['argmax_agreement']:.2%}",
            f"{q['vs_fp32']['max_abs_prob_diff']:.2e}",
            f"{q['size_mb']:.1f} MB; b1 {gate['b1_latency_ms']:.1f} ms vs fp32 {gate['fp32_b1_latency_ms']:.1f} ms",
        )
    if "tensorrt" in r:
        t = r["tensorrt"]
        table.add_row(
            f"TensorRT {t['precision']} vs fp32",
            f"{t['vs_fp32']['argmax_agreement']:.2%}",
            f"{t['vs_fp32']['max_abs_prob_diff']:.2e}",
            f"b1 {t['b1_latency_ms']:.2f} ms",
        )
    console = Console(stderr=True)
    console.print(table)
    if "int8" in r:
        q = r["int8"]
        console.print(
            f"INT8 search: kept {q['float_layers']} float layers, {q['calibration']} (setting {len(q['search'])} "
            f"tried); gate on {q['gate']['n_images']} photos not calibrated on", soft_wrap=True
        )
    print_result(result.path)
