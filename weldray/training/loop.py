"""The per-worker training loop run by Ray Train's TorchTrainer.

Everything the loop needs arrives in ``config`` (plain, picklable values). Rank 0 writes the
checkpoint (latest state + the weights the run keeps) every epoch through ``ray.train.report``; on restart
(worker failure, or the same run name again) the loop resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import unwrap_model

from weldray.training.data import Augment, epoch_batches, sub_seed

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def phase_size(epoch: int, epochs: int, sizes: list[int]) -> int:
    """Progressive resizing: the epochs split evenly into one phase per size, small to large."""
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // max(epochs, 1))]


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy against soft targets (MixUp/CutMix/label smoothing) with optional class weights,
    normalised by the weight each sample's target carries."""
    logp = F.log_softmax(logits.float(), dim=1)
    if weight is None:
        return -(target * logp).sum(1).mean()
    wt = target * weight
    return -(wt * logp).sum() / wt.sum()


def _build_optimizer(model: torch.nn.Module, cfg: dict[str, Any], total_steps: int) -> torch.optim.Optimizer:
    back, new = unwrap_model(model).param_groups()
    groups = [
        {"params": back, "lr": cfg["lr"] * cfg["backbone_lr_mult"], "name": "backbone"},
        {"params": new, "lr": cfg["lr"], "name": "head"},
    ]
    if cfg["optimizer"] == "ranger21":
        from pytorch_optimizer import Ranger21

        # Our cosine/warmup schedule drives the lr for every optimizer, so Ranger21's own is off.
        return Ranger21(
            groups,
            num_iterations=total_steps,
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            disable_lr_scheduler=True,
        )
    return torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _warmup_cosine(start: int, warmup: int, total: int, floor: float = 0.01) -> Callable[[int], float]:
    """An lr multiplier: 0 before ``start``, then a linear warmup over ``warmup`` steps and a cosine decay to ``floor``
    at ``total``."""

    def factor(step: int) -> float:
        if step < start:
            return 0.0
        step -= start
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - start - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _build_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, warmup_epochs: float, freeze_epochs: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warmup then cosine decay to 1% as a multiplier of each group's own lr, so
    the backbone/head ratio (discriminative LR) holds at every step. With ``freeze_epochs`` the
    backbone's schedule starts, with its own warmup, when those epochs are over."""
    total = max(1, epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)
    head = _warmup_cosine(0, warmup, total)
    if not freeze_epochs:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, head)
    backbone = _warmup_cosine(freeze_epochs * steps_per_epoch, warmup, total)
    # The groups' order is _build_optimizer's: backbone, head.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone, head])


def _mixup(cfg: dict[str, Any], num_classes: int) -> Any:
    from timm.data import Mixup

    if cfg["mixup_alpha"] <= 0 and cfg["cutmix_alpha"] <= 0 or cfg["mixup_prob"] <= 0:
        return None
    return Mixup(
        mixup_alpha=cfg["mixup_alpha"],
        cutmix_alpha=cfg["cutmix_alpha"],
        prob=cfg["mixup_prob"],
        label_smoothing=cfg["label_smoothing"],
        num_classes=num_classes,
    )


def _targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Loss, accuracy and balanced accuracy of ``model`` over ``{"image", "label"}`` batches."""
    from sklearn.metrics import balanced_accuracy_score

    model.eval()
    logits, labels = [], []
    for batch in batches:
        logits.append(model(batch["image"].float().contiguous(memory_format=torch.channels_last)).float().cpu())
        labels.append(batch["label"].cpu())
    z, y = torch.cat(logits), torch.cat(labels)
    pred = z.argmax(1).numpy()
    return {
        "val_loss": float(F.cross_entropy(z, y)),
        "val_acc": float((pred == y.numpy()).mean()),
        "val_bal_acc": float(balanced_accuracy_score(y.numpy(), pred)),
    }


def selection_score(metrics: dict[str, float]) -> float:
    """Epoch ranking for early stopping: balanced accuracy decides, lower validation loss breaks
    ties (tiny validation sets give coarse accuracies)."""
    return metrics["val_bal_acc"] - 1e-3 * metrics["val_loss"]


@dataclass
class StepContext:
    """What one optimisation step needs besides the batch: shared by the Ray Train loop and the
    in-process ablation harness (benchmarks/ablation.py), so both train exactly the same way."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    mixup: Any
    weight: torch.Tensor | None
    num_classes: int
    label_smoothing: float
    device: torch.device
    use_amp: bool
    ema: Any = None  # timm ModelEmaV3 of the unwrapped model, or None
    step: int = 0

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The weights to validate and keep: the moving average when EMA is on."""
        return self.ema.module if self.ema is not None else model


def train_epoch(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], ctx: StepContext
) -> tuple[int, float, int]:
    """One pass over ``batches`` (MixUp/CutMix on even-sized batches, else smoothed one-hot
    targets); returns (images seen, summed loss, steps)."""
    model.train()
    seen, loss_sum, steps = 0, 0.0, 0
    for batch in batches:
        x, y = batch["image"].float().contiguous(memory_format=torch.channels_last), batch["label"].long()
        if x.shape[0] < 2:
            continue
        if ctx.mixup is not None and x.shape[0] % 2 == 0:
            x, target = ctx.mixup(x, y)
        else:
            target = _targets(y, ctx.num_classes, ctx.label_smoothing)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.use_amp):
            logits = model(x, target)
        loss = soft_cross_entropy(logits, target, ctx.weight)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        ctx.scheduler.step()
        ctx.step += 1
        if ctx.ema is not None:
            ctx.ema.update(unwrap_model(model), step=ctx.step)
        steps += 1
        seen += x.shape[0]
        loss_sum += float(loss.detach())
    return seen, loss_sum, steps


def step_context(
    model: torch.nn.Module,
    cfg: dict[str, Any],
    *,
    steps_per_epoch: int,
    num_classes: int,
    class_weights: list[float],
    device: torch.device,
) -> StepContext:
    """Optimizer (discriminative LR), warmup+cosine schedule, AMP scaler, MixUp, class weights and
    weight EMA from the ``training`` config dict."""
    use_amp = device.type == "cuda"
    optimizer = _build_optimizer(model, cfg, cfg["epochs"] * steps_per_epoch)
    ema = None
    if cfg["ema_decay"] > 0:
        from timm.utils import ModelEmaV3

        # Warmup: the average follows the weights closely early on, so short runs still gain.
        ema = ModelEmaV3(unwrap_model(model), decay=cfg["ema_decay"], use_warmup=True)
    return StepContext(
        optimizer=optimizer,
        scheduler=_build_scheduler(
            optimizer, steps_per_epoch, cfg["epochs"], cfg["warmup_epochs"], cfg["freeze_epochs"]
        ),
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
        mixup=_mixup(cfg, num_classes),
        weight=torch.tensor(class_weights, device=device) if cfg["class_weighting"] else None,
        num_classes=num_classes,
        label_smoothing=cfg["label_smoothing"],
        device=device,
        use_amp=use_amp,
        ema=ema,
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from weldray.config import ModelConfig
    from weldray.models import build_classifier
    from weldray.tracking import allow_file_store

    cfg = config["training"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["torch_threads"])
    device = ray.train.torch.get_device()
    # This worker's training rows: a fixed share of the decoded rows (the same for the same world size).
    train_rows = config["train_rows"] if world == 1 else config["train_rows"].split(world, equal=True)[rank]

    classes = config["classes"]
    num_classes = len(classes)
    # channels_last: oneDNN's fast convolution layout on CPU (1.7x the img/s of NCHW for Lite0 on
    # this 2-core box) and the tensor-core layout for AMP on GPU.
    # The driver resolved and loaded the pretrained weights (trainer.initial_model): no weights file here.
    model = build_classifier(ModelConfig(**config["model"]), num_classes, pretrained=False, classes=classes)
    model.load_state_dict(ray.get(config["initial_state"]))
    model = ray.train.torch.prepare_model(model.to(memory_format=torch.channels_last))
    steps_per_epoch = max(1, config["n_train"] // (cfg["batch_size"] * world))
    step = step_context(
        model,
        cfg,
        steps_per_epoch=steps_per_epoch,
        num_classes=num_classes,
        class_weights=config["class_weights"],
        device=device,
    )
    optimizer, scheduler = step.optimizer, step.scheduler
    inner = unwrap_model(model)

    start_epoch, best_score, bad_epochs, kept_state, kept_metrics, resumed_from = 0, -math.inf, 0, None, {}, 0
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if step.ema is not None and state.get("ema") is not None:
            step.ema.module.load_state_dict(state["ema"])
        step.step = state.get("step", 0)
        start_epoch, best_score, bad_epochs = state["epoch"] + 1, state["best_score"], state["bad_epochs"]
        kept_state, kept_metrics, history = state["kept_model"], state["kept_metrics"], state["history"]
        resumed_from = start_epoch
        log.warning("resuming from the checkpoint of epoch %d", state["epoch"])

    writer = None
    if rank == 0 and cfg["log_tensorboard"] and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])
    mlflow = None
    if rank == 0 and cfg["log_mlflow"]:
        import mlflow  # optional extra: pip install 'weldray[tracking]'

        mlflow.set_tracking_uri(allow_file_store(config["mlflow_uri"]))
        mlflow.set_experiment("weldray")
        mlflow.start_run(run_name=config["run_id"])

    # A final fit holds no validation rows out: no per-epoch validation, and the run keeps its final weights.
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None
    epochs = cfg["epochs"]
    for epoch in range(start_epoch, epochs):
        size = phase_size(epoch, epochs, cfg["image_sizes"])
        # Every random draw of an epoch comes from the run's seed and the epoch (the data's order and augmentation,
        # MixUp/CutMix from numpy's generator, dropout from torch's): the same seed trains the same model on one
        # worker, and a resumed run continues as the uninterrupted one would have.
        worker_seed = sub_seed(config["seed"], epoch, rank)
        torch.manual_seed(worker_seed)
        np.random.seed(worker_seed)
        t0 = time.perf_counter()
        seen, loss_sum, steps = train_epoch(
            model,
            epoch_batches(
                train_rows,
                augment=Augment.for_training(cfg, size, sub_seed(config["seed"], epoch)),
                batch_size=cfg["batch_size"],
                num_cpus=config["data_cpus"],
                device=device,
            ),
            step,
        )
        train_time = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "image_size": size,
            "train_loss": loss_sum / max(steps, 1),
            "lr": optimizer.param_groups[1]["lr"],
            "images_per_s": seen * world / max(train_time, 1e-9),
            "epoch_time_s": train_time,
            "resumed_from": resumed_from,
        }
        if val_shard is not None:
            metrics.update(validate(step.eval_model(model), val_shard.iter_torch_batches(batch_size=64, device=device)))
            # Best so far: comparable between runs stopped at different epochs (a sweep's ASHA rungs).
            metrics["val_loss_best"] = min([metrics["val_loss"], *(h["val_loss"] for h in history)])
            metrics["val_bal_acc_best"] = max([metrics["val_bal_acc"], *(h["val_bal_acc"] for h in history)])
        score = selection_score(metrics) if val_shard is not None else float(epoch)
        improved = score > best_score
        if improved:
            best_score, bad_epochs = score, 0
        else:
            bad_epochs += 1
        # With early stopping the run keeps its best validation epoch; without, its final (EMA)
        # weights: on a few dozen validation photos the best epoch mostly picks noise
        # (benchmarks/ablation.py: 5-fold CV 0.773 best-epoch vs 0.787 final weights).
        if improved or cfg["early_stopping_patience"] == 0:
            kept_state = {k: v.detach().cpu().clone() for k, v in step.eval_model(inner).state_dict().items()}
            kept_metrics = dict(metrics)
        stop = cfg["early_stopping_patience"] > 0 and bad_epochs >= cfg["early_stopping_patience"]
        metrics.update(
            kept_val_bal_acc=kept_metrics.get("val_bal_acc", float("nan")),
            kept_epoch=kept_metrics.get("epoch", -1),
            early_stopped=stop,
        )
        history.append(dict(metrics))
        if writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(k, v, epoch)
            writer.flush()
        if mlflow is not None:
            mlflow.log_metrics(
                {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=epoch
            )
        if rank == 0:
            val = (
                f"val_bal_acc {metrics['val_bal_acc']:.3f} val_loss {metrics['val_loss']:.3f} "
                if val_shard is not None
                else ""
            )
            log.info(
                "[weldray train] epoch %d/%d size %d loss %.3f %s%.1f img/s %.0fs",
                epoch + 1, epochs, size, metrics["train_loss"], val, metrics["images_per_s"], train_time,
            )
            if config.get("progress") is not None:  # the driver's epoch bar (weldray.training.progress)
                config["progress"].put_nowait(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "model": inner.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "ema": step.ema.module.state_dict() if step.ema is not None else None,
                        "step": step.step,
                        "epoch": epoch,
                        "best_score": best_score,
                        "bad_epochs": bad_epochs,
                        "kept_model": kept_state,
                        "kept_metrics": kept_metrics,
                        "history": history,
                    },
                    os.path.join(tmp, STATE_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
        if stop:
            break
    if writer is not None:
        writer.close()
    if mlflow is not None:
        mlflow.end_run()
