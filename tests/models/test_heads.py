import math

import pytest
import torch

from weldray.models.heads import LinearHead, MarginHead


def _head(kind: str, s: float = 30.0, m: float = 0.5) -> MarginHead:
    torch.manual_seed(0)
    return MarginHead(8, 3, kind=kind, scale=s, margin=m)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_inference_logits_are_scaled_cosines(kind: str) -> None:
    head = _head(kind, s=17.0)
    e = torch.randn(5, 8)
    cos = torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).T
    torch.testing.assert_close(head(e), 17.0 * cos)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_only_on_target_logit(kind: str) -> None:
    head = _head(kind, s=30.0, m=0.3)
    e = torch.randn(6, 8)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    plain, trained = head(e), head(e, target)
    onehot = torch.nn.functional.one_hot(target, 3).bool()
    torch.testing.assert_close(trained[~onehot], plain[~onehot])  # non-target logits untouched
    assert (trained[onehot] < plain[onehot]).all()  # target logit penalised


def test_arcface_margin_value() -> None:
    head = _head("arcface", s=10.0, m=0.4)
    e = torch.randn(4, 8)
    target = torch.tensor([0, 1, 2, 1])
    cos = head(e) / 10.0
    theta = torch.acos(cos[torch.arange(4), target].clamp(-1, 1))
    expected = torch.where(
        theta + 0.4 < math.pi,
        torch.cos(theta + 0.4),
        cos[torch.arange(4), target] - math.sin(math.pi - 0.4) * 0.4,
    )
    torch.testing.assert_close(
        head(e, target)[torch.arange(4), target], 10.0 * expected, atol=1e-4, rtol=1e-4
    )


def test_cosface_margin_value() -> None:
    head = _head("cosface", s=20.0, m=0.35)
    e = torch.randn(4, 8)
    target = torch.tensor([2, 1, 0, 0])
    idx = torch.arange(4)
    torch.testing.assert_close(head(e, target)[idx, target], head(e)[idx, target] - 20.0 * 0.35)


def test_soft_targets_scale_the_margin() -> None:
    head = _head("cosface", s=10.0, m=0.2)
    e = torch.randn(2, 8)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    diff = head(e) - head(e, soft)
    torch.testing.assert_close(diff, 10.0 * 0.2 * soft)


def test_softmax_head_ignores_target() -> None:
    head = LinearHead(8, 3)
    e = torch.randn(3, 8)
    torch.testing.assert_close(head(e), head(e, torch.tensor([0, 1, 2])))
