"""Small untrained checkpoints and exports shared by the export, inference and serve tests."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

CLASSES = ["good_weld", "bad_weld"]


def make_checkpoint(
    path: Path,
    backbone: str = "efficientnet_lite0",
    image_size: int = 64,
    seed: int = 0,
    borderline: list[str] | None = None,
) -> Path:
    """A random-weight classifier checkpoint (no training: parity does not need accuracy).

    ``borderline``: images to put on the decision boundary: a softmax head whose bias splits their logit
    differences at the median, so that any rounding (INT8) flips the argmax of the images nearest to it.
    """
    import numpy as np
    import torch

    from weldray.config import ModelConfig
    from weldray.export.parity import load_inputs
    from weldray.models import CheckpointMeta, build_classifier, save_checkpoint

    torch.manual_seed(seed)
    cfg = ModelConfig(
        backbone=backbone, pretrained=False, image_size=image_size, head="softmax" if borderline else "arcface"
    )
    model = build_classifier(cfg, len(CLASSES), pretrained=False, classes=CLASSES).eval()
    if borderline:
        with torch.no_grad():
            z = model(torch.from_numpy(load_inputs(borderline, image_size)[0])).numpy()
            d = np.sort(z[:, 1] - z[:, 0])
            k = len(d) // 2
            model.head.fc.bias[1] -= float(d[k - 1] + d[k]) / 2  # between two images: no exact tie
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        path,
        model,
        CheckpointMeta(
            classes=CLASSES,
            image_size=image_size,
            model=asdict(cfg),
            temperature=1.5,
            run_id="test-run",
            manifest_sha256="0" * 64,
        ),
    )
    return path


def export_small(
    tmp: Path, check_images: Path, fmt: str = "onnx", n: int = 8, overrides: tuple[str, ...] = (), **kw
) -> object:
    """Checkpoint + export in ``tmp``; returns the ExportResult."""
    from weldray.config import load_config
    from weldray.export import export_checkpoint

    ckpt = make_checkpoint(tmp / "run" / "model.pt", **kw)
    cfg = load_config(
        [
            f"export.check_images={check_images}",
            f"export.parity_images={n}",
            f"export.calibration_images={n}",
            f"output_dir={tmp / 'outputs'}",
            *overrides,
        ]
    )
    return export_checkpoint(ckpt.parent, cfg, fmt=fmt, output=tmp / "onnx" / "weld_classifier.onnx")
