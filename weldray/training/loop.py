"""The per-worker training loop run by Ray Train's TorchTrainer.

Everything the loop needs arrives in ``config`` (plain, picklable values). Rank 0 writes the
checkpoint (latest state + best weights) every epoch through ``ray.train.report``; on restart
(worker failure, or the same run name again) the loop resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

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
    inner = model.module if hasattr(model, "module") else model
    back, new = inner.param_groups()
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


def _build_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, cfg: dict[str, Any]) -> Any:
    """Per-step linear warmup then cosine decay to 1% as a multiplier of each group's own lr, so
    the backbone/head ratio (discriminative LR) holds at every step."""
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warmup = int(cfg["warmup_epochs"] * steps_per_epoch)
    floor = 0.01

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
def _validate(model: torch.nn.Module, shard: Any, device: torch.device, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score

    model.eval()
    logits, labels = [], []
    for batch in shard.iter_torch_batches(batch_size=64, device=device):
        logits.append(model(batch["image"].float()).float().cpu())
        labels.append(batch["label"].cpu())
    z, y = torch.cat(logits), torch.cat(labels)
    pred = z.argmax(1).numpy()
    return {
        "val_loss": float(F.cross_entropy(z, y)),
        "val_acc": float((pred == y.numpy()).mean()),
        "val_bal_acc": float(balanced_accuracy_score(y.numpy(), pred)),
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from weldray.config import ModelConfig
    from weldray.models import build_classifier

    cfg = config["training"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(config["seed"] + rank)
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"

    classes = config["classes"]
    num_classes = len(classes)
    model = build_classifier(ModelConfig(**config["model"]), num_classes, classes=classes)
    model = ray.train.torch.prepare_model(model)
    steps_per_epoch = max(1, config["n_train"] // (cfg["batch_size"] * world))
    optimizer = _build_optimizer(model, cfg, cfg["epochs"] * steps_per_epoch)
    scheduler = _build_scheduler(optimizer, steps_per_epoch, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    mixup = _mixup(cfg, num_classes)
    weight = torch.tensor(config["class_weights"], device=device) if cfg["class_weighting"] else None
    inner = model.module if hasattr(model, "module") else model

    start_epoch, best_score, bad_epochs, best_state, best_metrics, resumed_from = 0, -math.inf, 0, None, {}, 0
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_score, bad_epochs = state["epoch"] + 1, state["best_score"], state["bad_epochs"]
        best_state, best_metrics, history = state["best_model"], state["best_metrics"], state["history"]
        resumed_from = start_epoch
        log.warning("resuming from the checkpoint of epoch %d", state["epoch"])

    writer = None
    if rank == 0 and cfg["log_tensorboard"] and config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])
    mlflow = None
    if rank == 0 and cfg["log_mlflow"]:
        import mlflow  # optional extra: pip install 'weldray[tracking]'

        mlflow.set_tracking_uri(cfg["mlflow_tracking_uri"] or "file:" + os.path.abspath("mlruns"))
        mlflow.set_experiment("weldray")
        mlflow.start_run(run_name=config["run_id"])

    val_shard = ray.train.get_dataset_shard("val")
    epochs = cfg["epochs"]
    for epoch in range(start_epoch, epochs):
        size = phase_size(epoch, epochs, cfg["image_sizes"])
        shard = ray.train.get_dataset_shard(f"train_{size}")
        model.train()
        t0, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        for batch in shard.iter_torch_batches(
            batch_size=cfg["batch_size"],
            drop_last=True,
            local_shuffle_buffer_size=config["n_train"],
            device=device,
        ):
            x, y = batch["image"].float(), batch["label"].long()
            if x.shape[0] < 2:
                continue
            if mixup is not None and x.shape[0] % 2 == 0:
                x, target = mixup(x, y)
            else:
                target = _targets(y, num_classes, cfg["label_smoothing"])
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x, target)
            loss = soft_cross_entropy(logits, target, weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            steps += 1
            scheduler.step()
            seen += x.shape[0]
            loss_sum += float(loss.detach())
        train_time = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            "image_size": size,
            "train_loss": loss_sum / max(steps, 1),
            "lr": optimizer.param_groups[1]["lr"],
            "images_per_s": seen * world / max(train_time, 1e-9),
            "epoch_time_s": train_time,
            "resumed_from": resumed_from,
            **_validate(model, val_shard, device, num_classes),
        }
        # Balanced accuracy decides; lower val loss breaks ties (tiny val sets give coarse accuracies).
        score = metrics["val_bal_acc"] - 1e-3 * metrics["val_loss"]
        if score > best_score:
            best_score, bad_epochs = score, 0
            best_state = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
            best_metrics = dict(metrics)
        else:
            bad_epochs += 1
        stop = cfg["early_stopping_patience"] > 0 and bad_epochs >= cfg["early_stopping_patience"]
        metrics.update(
            best_val_bal_acc=best_metrics.get("val_bal_acc", float("nan")),
            best_epoch=best_metrics.get("epoch", -1),
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
            print(
                f"[weldray train] epoch {epoch + 1}/{epochs} size {size} loss {metrics['train_loss']:.3f} "
                f"val_bal_acc {metrics['val_bal_acc']:.3f} val_loss {metrics['val_loss']:.3f} "
                f"{metrics['images_per_s']:.1f} img/s {train_time:.0f}s",
                flush=True,
            )
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "model": inner.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "best_score": best_score,
                        "bad_epochs": bad_epochs,
                        "best_model": best_state,
                        "best_metrics": best_metrics,
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
