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
           "epochs": 4, "warmup_epochs": 1.0, "freeze_epochs": 0}
    opt = _build_optimizer(model, cfg, total_steps=8)
    sched = _build_scheduler(opt, 2, cfg["epochs"], cfg["warmup_epochs"], cfg["freeze_epochs"])
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


def test_freeze_epochs_train_the_head_first_then_the_backbone() -> None:
    """Linear probe, then fine-tune: during freeze_epochs the backbone's weights stay as loaded while the head learns;
    then the backbone warms up and decays on its own schedule."""
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(pretrained=False, image_size=64, embedding_dim=16), 2)
    cfg = {"lr": 1e-2, "backbone_lr_mult": 1.0, "weight_decay": 0.05, "optimizer": "adamw",
           "epochs": 4, "warmup_epochs": 1.0, "freeze_epochs": 2}
    opt = _build_optimizer(model, cfg, total_steps=8)
    sched = _build_scheduler(opt, 2, cfg["epochs"], cfg["warmup_epochs"], cfg["freeze_epochs"])
    backbone = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    head = {k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith("backbone.")}
    x, y = torch.rand(4, 3, 64, 64) * 255, torch.tensor([0, 1, 0, 1])
    lrs = []
    for step in range(8):
        lrs.append([g["lr"] for g in opt.param_groups])
        loss = torch.nn.functional.cross_entropy(model(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step == 3:  # the end of the two frozen epochs
            assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.named_parameters())
            assert any(not torch.equal(v, head[k]) for k, v in model.named_parameters() if k in head)
    back, head_lr = zip(*lrs, strict=True)
    assert back[:4] == (0.0,) * 4 and min(head_lr[:4]) > 0
    assert 0 < back[4] < back[5] and back[-1] < back[5]  # the backbone's own warmup, then cosine
    assert any(not torch.equal(v, backbone[k]) for k, v in model.backbone.named_parameters())


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_train_epoch_steps_and_weight_ema(ema_decay: float) -> None:
    """One epoch through the shared step code: the schedule advances once per batch, and with EMA
    on, validation sees averaged weights that lag the trained ones (off: the model itself)."""
    from dataclasses import asdict

    from weldray.config import load_config
    from weldray.training.loop import step_context, train_epoch, validate

    torch.manual_seed(0)
    model = build_classifier(ModelConfig(pretrained=False, image_size=32, embedding_dim=8, head="softmax"), 2)
    cfg = asdict(load_config([f"training.ema_decay={ema_decay}", "training.epochs=1"]).training)
    ctx = step_context(model, cfg, steps_per_epoch=3, num_classes=2, class_weights=[1.0, 1.0],
                       device=torch.device("cpu"))
    batches = [{"image": torch.rand(4, 3, 32, 32) * 255, "label": torch.tensor([0, 1, 0, 1])} for _ in range(3)]
    seen, loss_sum, steps = train_epoch(model, batches, ctx)
    assert (seen, steps, ctx.step) == (12, 3, 3) and np.isfinite(loss_sum)
    averaged = ctx.eval_model(model)
    if ema_decay == 0:
        assert averaged is model
    else:
        assert averaged is not model
        w_model, w_ema = model.head.fc.weight, averaged.head.fc.weight
        assert not torch.equal(w_model, w_ema)
    assert set(validate(averaged, batches)) == {"val_loss", "val_acc", "val_bal_acc"}


def _manifest():  # type: ignore[no-untyped-def]
    import pandas as pd

    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + ["excluded"]
    return pd.DataFrame({"path": [f"p{i}" for i in range(11)], "split": splits, "fold": [i % 2 for i in range(11)]})


@pytest.mark.parametrize(
    ("cv_fold", "holdout", "n_train", "n_val", "n_test"),
    [
        (None, False, 10, 0, 0),  # the final fit: every labelled row, the excluded one never
        (None, True, 6, 2, 2),  # quick check on the manifest's splits
        (0, False, 5, 0, 5),  # a CV fold: every row outside fold 0 trains
        (0, True, 4, 1, 5),  # ... minus the other folds' val rows
    ],
)
def test_split_rows_per_mode(cv_fold: int | None, holdout: bool, n_train: int, n_val: int, n_test: int) -> None:
    from weldray.training.data import split_rows

    s = split_rows(_manifest(), cv_fold, holdout)
    assert (len(s.train), len(s.val), len(s.test)) == (n_train, n_val, n_test)
    assert not set(s.train["path"]) & (set(s.val["path"]) | set(s.test["path"]))


def test_early_stopping_needs_held_out_rows() -> None:
    from weldray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="training.holdout=true"):
        load_config(["training.early_stopping_patience=3"])
    assert load_config(["training.early_stopping_patience=3", "training.holdout=true"]).training.holdout


def test_every_ablation_recipe_is_a_valid_config_that_changes_the_default() -> None:
    """`make ablation` runs for hours: a recipe whose override is misspelt or invalid must fail here, not there; and
    one that the defaults have made a no-op would measure the default twice under another name."""
    import ablation

    from weldray.config import load_config
    from weldray.training.cv import recipe_fingerprint

    default = load_config(ablation.RECIPES["default"])
    # The cpu default is issue 15's plain script in weldray's keys (docs/training.md#the-recipe).
    assert (default.model.head, default.training.epochs, default.model.image_size) == ("softmax", 24, 288)
    for name, overrides in ablation.RECIPES.items():
        cfg = load_config(overrides)
        assert cfg.model.image_size == cfg.training.image_sizes[-1], name
        assert name == "default" or recipe_fingerprint(cfg) != recipe_fingerprint(default), name
