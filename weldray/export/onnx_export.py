"""PyTorch -> ONNX (opset 18, dynamic batch) with the weights embedded in one file."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model, path: str | Path, image_size: int, *, opset: int = 18) -> Path:
    """Export ``model`` (float32 [B,3,S,S] raw RGB -> logits [B,C]) with a dynamic batch axis.

    Uses the dynamo exporter with an example batch of 2 (a batch of 1 gets specialised and fails
    the dynamic-batch constraint). The dynamo exporter writes weights to a side ``.data`` file;
    they are embedded so the model is one file (and ONNX Runtime's quantiser accepts it).
    """
    import onnx
    import torch

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # one INFO line per deduplicated initializer
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(raw),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        proto = onnx.load(str(raw))  # pulls external weights in
        onnx.checker.check_model(proto)
        staged = Path(tmp) / "embedded.onnx"
        onnx.save(proto, str(staged), save_as_external_data=False)
        shutil.move(str(staged), path)
    log.info("exported ONNX opset %d to %s (%.1f MB)", opset, path, path.stat().st_size / 1e6)
    return path
