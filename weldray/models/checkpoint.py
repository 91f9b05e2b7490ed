"""The classifier checkpoint format shared by training, evaluation, export and serving.

One ``torch.save`` file: ``{"format": CHECKPOINT_FORMAT, "meta": CheckpointMeta as dict,
"state_dict": ...}``. Loading rebuilds the network from ``meta.model`` without pretrained
weights and loads the state dict; it uses ``weights_only=True`` (no pickled code).
Probabilities are ``softmax(logits / meta.temperature)``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from weldray.config import ModelConfig
from weldray.models.classifier import WeldClassifier, build_classifier

CHECKPOINT_FORMAT = "weldray.classifier/v1"
CHECKPOINT_NAME = "model.pt"


class CheckpointError(ValueError):
    """A file that is not a weldray classifier checkpoint."""


@dataclass
class CheckpointMeta:
    classes: list[str]
    image_size: int
    model: dict[str, Any]  # ModelConfig as a dict
    temperature: float = 1.0
    run_id: str = ""
    manifest_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def save_checkpoint(path: str | Path, model: WeldClassifier, meta: CheckpointMeta) -> None:
    """Write atomically (local) or to ``s3://``."""
    from weldray.io import write_bytes

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "meta": asdict(meta), "state_dict": state}, buf)
    write_bytes(str(path), buf.getvalue())


def _checkpoint_file(path: str | Path) -> str:
    from weldray.io import is_s3, join

    path = str(path)
    if is_s3(path):
        return path if path.endswith(".pt") else join(path, CHECKPOINT_NAME)
    p = Path(path)
    return str(p / CHECKPOINT_NAME if p.is_dir() else p)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[WeldClassifier, CheckpointMeta]:
    """A checkpoint file, or ``RUN_DIR/model.pt`` for a run directory; the model comes back in eval mode."""
    from weldray.io import read_bytes

    file = _checkpoint_file(path)
    try:
        data = read_bytes(file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no checkpoint at {file} (expected a model.pt or a run directory holding one)"
        ) from None
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{file} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{file} is not a {CHECKPOINT_FORMAT} checkpoint (format: {found!r})")
    known = {f.name for f in fields(CheckpointMeta)}
    meta = CheckpointMeta(**{k: v for k, v in obj["meta"].items() if k in known})
    model_cfg = ModelConfig(
        **{k: v for k, v in meta.model.items() if k in {f.name for f in fields(ModelConfig)}}
    )
    model = build_classifier(model_cfg, len(meta.classes), pretrained=False, classes=meta.classes)
    model.image_size = meta.image_size
    model.load_state_dict(obj["state_dict"])
    return model.to(map_location).eval(), meta
