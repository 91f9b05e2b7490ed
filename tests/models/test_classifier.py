from pathlib import Path

import pytest
import torch

from weldray.config import ModelConfig
from weldray.models import CheckpointError, CheckpointMeta, build_classifier, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "convnextv2_atto"])
@pytest.mark.parametrize("head", ["arcface", "softmax"])
def test_build_and_forward(backbone: str, head: str) -> None:
    cfg = ModelConfig(backbone=backbone, pretrained=False, head=head, embedding_dim=32, image_size=64)
    model = build_classifier(cfg, 2, classes=["good_weld", "bad_weld"]).eval()
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 2)
    assert model.classes == ["good_weld", "bad_weld"] and model.image_size == 64
    if head == "arcface":
        assert logits.abs().max() <= cfg.scale + 1e-4  # s * cos


def test_normalisation_is_inside_the_model() -> None:
    model = build_classifier(ModelConfig(pretrained=False, image_size=64), 2).eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert "mean" in model.state_dict() and "std" in model.state_dict()


def test_freeze_stages() -> None:
    model = build_classifier(ModelConfig(pretrained=False, freeze_stages=2, image_size=64), 2)
    assert not model.backbone.conv_stem.weight.requires_grad
    assert model.backbone.blocks[-1][0].conv_pw.weight.requires_grad
    back, new = model.param_groups()
    assert all(p.requires_grad for p in back + new)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(pretrained=False, image_size=64, head="cosface", scale=12.0)
    model = build_classifier(cfg, 2, classes=["good_weld", "bad_weld"]).eval()
    meta = CheckpointMeta(
        classes=model.classes,
        image_size=64,
        model=model.model_config,
        temperature=1.7,
        run_id="r1",
        metrics={"val_bal_acc": 0.9},
    )
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "model.pt", model, meta)
    loaded, meta2 = load_checkpoint(run)  # a run dir resolves to RUN_DIR/model.pt
    x = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert (
        meta2.temperature == 1.7
        and meta2.classes == ["good_weld", "bad_weld"]
        and meta2.model["head"] == "cosface"
    )
    assert not loaded.training


def test_wrong_format_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="weldray.classifier/v1"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_checkpoint(tmp_path / "missing")
