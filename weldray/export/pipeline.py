"""``export_checkpoint``: checkpoint -> ONNX fp32 (+ INT8, + TensorRT), each checked against its reference.

Every artefact is checked on real images before it is left on disk: fp32 ONNX against the PyTorch
checkpoint, INT8 and TensorRT against the fp32 ONNX model. A failed check deletes the artefact and
raises :class:`ParityError`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from weldray.config import WeldrayConfig
from weldray.export.images import select_check_images
from weldray.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from weldray.export.parity import (
    compare,
    load_inputs,
    session_latency_ms,
    session_probabilities,
    torch_probabilities,
)
from weldray.inference.sidecar import ModelSidecar, sidecar_path, write_sidecar

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """An exported model disagrees with its reference beyond the configured tolerance."""


@dataclass
class ExportResult:
    """The requested artefact and the figures measured on the way."""

    path: Path
    format: str
    sidecar: ModelSidecar
    artefacts: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def artefact_paths(output: str | Path) -> dict[str, Path]:
    """fp32 ONNX at ``output``; INT8 and TensorRT files beside it."""
    fp32 = Path(output)
    stem = fp32.with_suffix("")
    return {
        "onnx": fp32,
        "int8": stem.with_name(stem.name + ".int8.onnx"),
        "tensorrt": stem.with_name(stem.name + ".trt.onnx"),
        "tensorrt_cache": stem.with_name(stem.name + ".trt_cache"),
    }


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        Path(sidecar_path(p)).unlink(missing_ok=True) if p.suffix == ".onnx" else None


def _check(name: str, agreement, minimum: float, *artefacts: Path) -> None:
    log.info(
        "%s: argmax agreement %.2f%% on %d images, max |dp| %.2e",
        name,
        100 * agreement.argmax_agreement,
        agreement.n,
        agreement.max_abs_prob_diff,
    )
    if agreement.argmax_agreement < minimum:
        _remove(*artefacts)
        raise ParityError(
            f"{name}: argmax agreement {agreement.argmax_agreement:.2%} on {agreement.n} real images is "
            f"below the required {minimum:.2%} (max |dp| {agreement.max_abs_prob_diff:.3g}); "
            f"removed {[str(a) for a in artefacts]}"
        )


def export_format(cfg: WeldrayConfig, fmt: str | None = None) -> str:
    """``fmt`` (default ``export.format``) if this machine can export it: an unknown format, or TensorRT without
    an NVIDIA GPU, fails here, before any work (the training that ``weldray train --seeds`` does first too)."""
    from weldray.export.tensorrt import require_tensorrt

    fmt = fmt or cfg.export.format
    if fmt not in ("onnx", "int8", "tensorrt"):
        raise ValueError(f"unknown export format {fmt!r}; use onnx, int8 or tensorrt")
    if fmt == "tensorrt":
        require_tensorrt()
    return fmt


def export_checkpoint(
    source: str | Path | Sequence[str | Path],
    cfg: WeldrayConfig,
    *,
    fmt: str | None = None,
    output: str | Path | None = None,
    temperatures: Sequence[float] | None = None,
) -> ExportResult:
    """Export the checkpoint (file or run dir) ``source`` in ``fmt`` (default ``export.format``); several
    sources export as one ensemble graph (:mod:`weldray.export.ensemble`, members calibrated by their own
    temperatures or ``temperatures``). ``MODEL_CARD.md`` is written beside the fp32 model and rewritten with
    the INT8/TensorRT checks when those pass."""
    import onnxruntime as ort  # noqa: F401  (fail early when missing)

    from weldray.inference.providers import create_session
    from weldray.models import WeldClassifier, load_checkpoint
    from weldray.models.cam import CLASS_MAPS_OUTPUT, WithClassMaps

    fmt = export_format(cfg, fmt)
    paths = artefact_paths(output or cfg.export.output)
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise ValueError("nothing to export: name a training run directory or checkpoint")
    if len(sources) > 1:
        from weldray.export.ensemble import load_ensemble

        model, meta = load_ensemble(sources, temperatures)
    else:
        model, meta = load_checkpoint(sources[0])
        if temperatures is not None:
            meta.temperature = float(temperatures[0])
    size = int(meta.image_size)
    images = select_check_images(cfg, meta.manifest_sha256 or "")
    x_check, used = load_inputs(images.parity, size)
    log.info("parity check on %d real images from %s", len(used), images.source)

    sidecar = ModelSidecar(
        classes=list(meta.classes),
        input_size=size,
        temperature=float(meta.temperature),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        precision="fp32",
        backbone=str(meta.model.get("backbone", "")),
        run_id=meta.run_id or "",
        manifest_sha256=meta.manifest_sha256 or "",
        source_checkpoint=",".join(str(s) for s in sources),
        members=list(meta.model.get("ensemble", [])),
        opset=cfg.export.opset,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    report: dict[str, Any] = {"check_images": images.source, "n_check_images": len(used)}

    if isinstance(model, WeldClassifier):  # + class activation maps, a second output (weldray.models.cam)
        export_onnx(
            WithClassMaps(model), paths["onnx"], size, opset=cfg.export.opset,
            output_names=(OUTPUT_NAME, CLASS_MAPS_OUTPUT),
        )
        sidecar.maps_output = CLASS_MAPS_OUTPUT
    else:
        export_onnx(model, paths["onnx"], size, opset=cfg.export.opset)
    fp32 = create_session(str(paths["onnx"]), "CPUExecutionProvider")
    p_torch = torch_probabilities(model, x_check, sidecar.temperature)
    p_fp32 = session_probabilities(fp32, x_check, sidecar.temperature)
    parity = compare(p_torch, p_fp32)
    _check("ONNX fp32 vs PyTorch", parity, cfg.export.min_agreement, paths["onnx"])
    report["onnx_vs_torch"] = parity.to_dict()
    report["fp32_size_mb"] = paths["onnx"].stat().st_size / 1e6
    sidecar.checks = {"vs_torch": parity.to_dict(), "check_images": images.source}
    write_sidecar(paths["onnx"], sidecar)
    result = _with_card(ExportResult(paths["onnx"], "onnx", sidecar, {"onnx": str(paths["onnx"])}, report),
                        sources, cfg)
    if fmt == "onnx":
        return result

    int8_source = None
    if fmt == "int8" or cfg.export.tensorrt_precision == "int8":
        result = _export_int8(
            paths, cfg, sidecar, images, size, fp32, x_check, p_torch, report
        )
        int8_source = result.path
    if fmt == "tensorrt":
        result = _export_tensorrt(
            paths, cfg, sidecar, int8_source or paths["onnx"], fp32, x_check, p_fp32, report
        )
    return _with_card(result, sources, cfg)


def _with_card(result: ExportResult, sources: Sequence[str | Path], cfg: WeldrayConfig) -> ExportResult:
    """Write the export's model card (:mod:`weldray.export.model_card`) and list it among the artefacts."""
    from dataclasses import asdict

    from weldray.export.model_card import export_overrides, model_card, write_model_card

    args = export_overrides(asdict(cfg.export), cfg.profile)
    text = model_card(sources, result.sidecar, result.artefacts, result.report, args)
    result.artefacts["model_card"] = str(write_model_card(result.path.parent, text))
    return result


def _export_int8(paths, cfg, sidecar, images, size, fp32, x_check, p_torch, report) -> ExportResult:
    """Search the INT8 settings (cheapest first) and keep the first whose agreement with fp32 passes the
    gate on images the quantiser never saw; no candidate passing is a ParityError with the table of tries."""
    import tempfile
    from dataclasses import replace

    from weldray.export.quantize import Int8Setting, preprocess, quantize_int8
    from weldray.inference.providers import create_session

    x_cal, used = load_inputs(images.calibration, size)
    x_gate, gate_used = load_inputs(images.gate, size)
    p_gate = session_probabilities(fp32, x_gate, sidecar.temperature)
    one = x_check[:1]
    fp32_ms = session_latency_ms(fp32, one)
    minimum = cfg.export.min_int8_agreement
    settings = [Int8Setting(n, m) for n in cfg.export.int8_float_layers for m in cfg.export.int8_calibration]
    log.info(
        "INT8 search: up to %d settings, calibrated on %d images, gated on %d others (agreement >= %.2f%%)",
        len(settings), len(used), len(gate_used), 100 * minimum,
    )
    tried: list[dict[str, Any]] = []
    chosen = None
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(paths["onnx"], Path(tmp) / "pre.onnx")
        for setting in settings:
            quantize_int8(pre, paths["int8"], x_cal, setting, input_name=INPUT_NAME)
            int8 = create_session(str(paths["int8"]), "CPUExecutionProvider")
            vs_fp32 = compare(p_gate, session_probabilities(int8, x_gate, sidecar.temperature))
            row = {
                "float_layers": setting.float_layers,
                "calibration": setting.calibration,
                "agreement": vs_fp32.argmax_agreement,
                "max_abs_prob_diff": vs_fp32.max_abs_prob_diff,
                "b1_latency_ms": session_latency_ms(int8, one),
                "passed": vs_fp32.argmax_agreement >= minimum,
            }
            tried.append(row)
            log.info(
                "  %-28s agreement %.2f%% (%d images), b1 %.2f ms (fp32 %.2f ms)%s",
                setting.label, 100 * row["agreement"], vs_fp32.n, row["b1_latency_ms"], fp32_ms,
                "  <- kept" if row["passed"] else "",
            )
            if row["passed"]:
                chosen = (setting, vs_fp32, int8)
                break
    if chosen is None:
        _remove(paths["int8"])
        table = "\n".join(
            f"  {r['float_layers']:>3} float layers, {r['calibration']:<10} agreement {r['agreement']:.2%}, "
            f"b1 {r['b1_latency_ms']:.2f} ms" for r in tried
        )
        raise ParityError(
            f"ONNX INT8 vs fp32: no setting reached the required {minimum:.2%} argmax agreement on "
            f"{len(gate_used)} real images not used for calibration; tried:\n{table}\n"
            "serve the fp32 model, or widen the search (export.int8_float_layers, export.int8_calibration)"
        )
    setting, vs_fp32, int8 = chosen
    gate = {
        "passed": True,
        "min_agreement": minimum,
        "n_images": len(gate_used),
        "agreement": vs_fp32.argmax_agreement,
        "b1_latency_ms": tried[-1]["b1_latency_ms"],
        "fp32_b1_latency_ms": fp32_ms,
        "faster_than_fp32": tried[-1]["b1_latency_ms"] < fp32_ms,
    }
    report["int8"] = {
        "calibration_images": len(used),
        "float_layers": setting.float_layers,
        "calibration": setting.calibration,
        "gate": gate,
        "search": tried,
        "vs_fp32": vs_fp32.to_dict(),
        "vs_torch": compare(p_torch, session_probabilities(int8, x_check, sidecar.temperature)).to_dict(),
        "size_mb": paths["int8"].stat().st_size / 1e6,
        "fp32_size_mb": paths["onnx"].stat().st_size / 1e6,
    }
    int8_sidecar = replace(
        sidecar,
        precision="int8",
        checks={
            "vs_fp32": vs_fp32.to_dict(),
            "gate": gate,
            "search": tried,
            "calibration_images": len(used),
            "float_layers": setting.float_layers,
            "calibration": setting.calibration,
        },
    )
    write_sidecar(paths["int8"], int8_sidecar)
    return ExportResult(
        paths["int8"], "int8", int8_sidecar, {"onnx": str(paths["onnx"]), "int8": str(paths["int8"])}, report
    )


def _export_tensorrt(paths, cfg, sidecar, onnx_source: Path, fp32, x_check, p_fp32, report) -> ExportResult:
    from dataclasses import replace

    from weldray.export.tensorrt import build_engine, tensorrt_options

    precision = cfg.export.tensorrt_precision
    shutil.copyfile(onnx_source, paths["tensorrt"])
    cache = paths["tensorrt_cache"]
    options = tensorrt_options(cache.name, sidecar.input_size, precision, cfg.export.tensorrt_max_batch)
    session = build_engine(paths["tensorrt"], options, cache)
    x = x_check[: cfg.export.tensorrt_max_batch]
    vs_fp32 = compare(
        p_fp32[: len(x)],
        session_probabilities(session, x, sidecar.temperature, batch_size=cfg.export.tensorrt_max_batch),
    )
    minimum = cfg.export.min_int8_agreement if precision == "int8" else cfg.export.min_agreement
    _check(f"TensorRT {precision} vs ONNX fp32", vs_fp32, minimum, paths["tensorrt"], cache)
    report["tensorrt"] = {
        "precision": precision,
        "vs_fp32": vs_fp32.to_dict(),
        "b1_latency_ms": session_latency_ms(session, x[:1]),
    }
    trt_sidecar = replace(
        sidecar,
        precision=f"tensorrt-{precision}",
        checks={"vs_fp32": vs_fp32.to_dict()},
        provider_options={"tensorrt": options},
    )
    write_sidecar(paths["tensorrt"], trt_sidecar)
    return ExportResult(
        paths["tensorrt"],
        "tensorrt",
        trt_sidecar,
        {"onnx": str(paths["onnx"]), "tensorrt": str(paths["tensorrt"]), "engine_cache": str(cache)},
        report,
    )
