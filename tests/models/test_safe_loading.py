"""Files a user points weldray at are loaded without running code they carry (``weights_only`` unpickling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


class _Payload:
    """Unpickling this would create ``marker``: the stand-in for code an attacker hides in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pretrained_weights_holding_a_pickled_object_are_refused(tmp_path: Path) -> None:
    from weldray.models.weights import read_state_dict

    marker = tmp_path / "ran"
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"model.weights=.*refused.*pickled Python objects.*state_dict"):
        read_state_dict(path)
    assert not marker.exists()


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path) -> None:
    from weldray.models import CheckpointError, load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"format": "weldray.classifier/v1", "meta": _Payload(marker), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
