"""Recipe pieces without Ray: progressive resizing, weighted soft CE, optimizers + schedule, class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weldray.config import ModelConfig
from weldray.models import build_classifier
from weldray.training.data import class_weights
from weldray.training.loop import _build_optimizer, _build_scheduler, phase_size, soft_cross_entropy


def test_progressive_resizing_phases() -> None:
    assert [phase_size(e, 6, [192, 224]) for e in range(6)] == [192, 192, 192, 224, 224, 224]
    assert [phase_size(e, 3, [96]) for e in range(3)] == [96, 96, 96]


def test_class_weights_balance_counts() -> None:
    w = class_weights(np.array([0] * 30 + [1] * 10), 2)
    assert w[1] == pytest.approx(3 * w[0]) and np.mean(w) == pytest.approx(1.0)


def test_weighted_soft_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    plain = soft_cross_entropy(logits, target, None)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0])))
    # Weight only class 0 targets -> unchanged; weights normalise by the target mass.
    torch.testing.assert_close(soft_cross_entropy(logits, target, torch.tensor([2.0, 1.0])), plain)


@pytest.mark.parametrize("optimizer", ["adamw", "ranger21"])
def test_optimizer_schedule_and_discriminative_lr(optimizer: str) -> None:
    model = build_classifier(ModelConfig(pretrained=False, image_size=64, embedding_dim=16), 2)
    cfg = {"lr": 1e-3, "backbone_lr_mult": 0.1, "weight_decay": 0.05, "optimizer": optimizer,
           "epochs": 4, "warmup_epochs": 1.0}
    opt = _build_optimizer(model, cfg, total_steps=8)
    sched = _build_scheduler(opt, steps_per_epoch=2, cfg=cfg)
    x, y = torch.rand(4, 3, 64, 64) * 255, torch.tensor([0, 1, 0, 1])
    lrs = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    back, head = zip(*lrs, strict=True)
    assert all(b == pytest.approx(h * 0.1) for b, h in zip(back, head, strict=True))
    assert head[1] > head[0]  # warmup rises
    assert head[-1] < max(head)  # cosine decays
