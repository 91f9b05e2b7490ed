"""The per-worker DINO loop run by Ray Train's TorchTrainer: self-distillation with no labels.

The student (backbone + projection head) sees every view of an image; the teacher, an exponential moving
average of the student, sees the 2 global views; lightly's ``DINOLoss`` makes the student match the teacher's
centred and sharpened distribution over ``pretrain.out_dim`` prototypes. Rank 0 checkpoints every epoch through
``ray.train.report``; on restart (a lost worker, or the same run name again) the loop resumes from it. The
teacher's backbone is what the run keeps (DINO's teacher is the better network).
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
import warnings
from typing import Any

import torch
from timm.utils import unwrap_model
from torch import nn

from weldray.config import ModelConfig
from weldray.config.pretrain import STUDENT_TEMP
from weldray.pretrain.data import VIEW_COLUMN
from weldray.training.loop import STATE_FILE

log = logging.getLogger(__name__)

#: DINO's gradient-norm clip (its reference code's --clip_grad 3.0).
CLIP_GRAD = 3.0


def build_backbone(model: ModelConfig) -> nn.Module:
    """The classifier's timm backbone, as :func:`weldray.models.build_classifier` builds it, without weights.

    ViT-family models are built to take any input size (global and local views differ; DINOv2 ViTs expect
    518 px otherwise): their position embeddings are interpolated at run time, and the state dict is the same.
    """
    import timm

    kwargs: dict[str, Any] = {
        "pretrained": False, "num_classes": 0, "drop_rate": model.drop_rate, "drop_path_rate": model.drop_path_rate
    }
    backbone = timm.create_model(model.backbone, **kwargs)
    if "dynamic_img_size" in inspect.signature(type(backbone)).parameters:
        backbone = timm.create_model(model.backbone, dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
    return backbone


class DinoNet(nn.Module):
    """Backbone + lightly's DINO projection head. ``forward(views)`` runs each run of same-sized views as one
    batch (DINO's multi-crop wrapper) and returns one output per view."""

    def __init__(self, backbone: nn.Module, cfg: dict[str, Any]) -> None:
        from lightly.models.modules import DINOProjectionHead

        super().__init__()
        self.backbone = backbone
        with warnings.catch_warnings():  # lightly 1.6 builds its last layer with torch's deprecated weight_norm
            warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm", category=FutureWarning)
            self.head = DINOProjectionHead(
                backbone.num_features,
                cfg["hidden_dim"],
                cfg["bottleneck_dim"],
                cfg["out_dim"],
                freeze_last_layer=cfg["freeze_last_layer_epochs"],
            )

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            out.extend(self.head(self.backbone(torch.cat(views[start:end]))).chunk(end - start))
            start = end
        return out


def teacher_temperature(criterion: Any, epoch: int) -> float:
    """The teacher temperature lightly's DINOLoss uses in ``epoch`` (its linear warmup, then constant)."""
    if epoch < criterion.warmup_teacher_temp_epochs:
        return float(criterion.teacher_temp_schedule[epoch])
    return float(criterion.teacher_temp)


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    from lightly.loss import DINOLoss
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from timm.optim import create_optimizer_v2

    from weldray.training.loop import _build_scheduler

    p = config["pretrain"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(config["seed"] + rank)
    device = ray.train.torch.get_device()

    # The driver resolved and loaded the start weights (trainer.initial_backbone): no weights file here.
    model_cfg = ModelConfig(**config["model"])
    student = DinoNet(build_backbone(model_cfg), p)
    student.backbone.load_state_dict(ray.get(config["initial_backbone"]))
    teacher = DinoNet(build_backbone(model_cfg), p)
    teacher.load_state_dict(student.state_dict())
    deactivate_requires_grad(teacher)
    # channels_last: oneDNN's fast convolution layout on CPU and the tensor-core layout for AMP on GPU.
    teacher = teacher.to(device, memory_format=torch.channels_last)
    student = ray.train.torch.prepare_model(student.to(memory_format=torch.channels_last))
    inner = unwrap_model(student)
    criterion = DINOLoss(
        output_dim=p["out_dim"],
        warmup_teacher_temp=p["warmup_teacher_temp"],
        teacher_temp=p["teacher_temp"],
        warmup_teacher_temp_epochs=p["warmup_teacher_temp_epochs"],
        student_temp=STUDENT_TEMP,
    ).to(device)
    # timm's AdamW groups: no weight decay on biases and norm layers.
    optimizer = create_optimizer_v2(inner, "adamw", lr=p["lr"], weight_decay=p["weight_decay"])
    steps_per_epoch = max(1, config["n_images"] // (p["batch_size"] * world))
    scheduler = _build_scheduler(optimizer, steps_per_epoch, p["epochs"], p["warmup_epochs"])
    total_steps = p["epochs"] * steps_per_epoch
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n_views = 2 + p["n_local_crops"]

    start_epoch, step, history, resumed_from = 0, 0, [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        inner.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        resumed_from = start_epoch
        log.warning("resuming from the checkpoint of epoch %d", state["epoch"])

    shard = ray.train.get_dataset_shard("train")
    epochs = p["epochs"]
    for epoch in range(start_epoch, epochs):
        student.train()
        teacher.train()
        t0 = time.perf_counter()
        seen, loss_sum, steps, momentum = 0, 0.0, 0, p["momentum_start"]
        for batch in shard.iter_torch_batches(
            batch_size=p["batch_size"], drop_last=True, local_shuffle_buffer_size=config["n_images"], device=device
        ):
            views = [
                batch[VIEW_COLUMN.format(i)].float().contiguous(memory_format=torch.channels_last)
                for i in range(n_views)
            ]
            momentum = cosine_schedule(min(step, total_steps), total_steps, p["momentum_start"], p["momentum_end"])
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                with torch.no_grad():
                    teacher_out = teacher(views[:2])
                student_out = student(views)
            loss = criterion([t.float() for t in teacher_out], [s.float() for s in student_out], epoch=epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            inner.head.cancel_last_layer_gradients(epoch)
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(inner.parameters(), CLIP_GRAD)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            update_momentum(inner, teacher, momentum)
            step += 1
            steps += 1
            seen += views[0].shape[0]
            loss_sum += float(loss.detach())
        epoch_time = time.perf_counter() - t0
        totals = torch.tensor([loss_sum, steps, seen], dtype=torch.float64, device=device)  # NCCL: on the GPU
        if world > 1:
            dist.all_reduce(totals)
        metrics = {
            "epoch": epoch,
            "loss": float(totals[0] / max(float(totals[1]), 1.0)),
            "lr": optimizer.param_groups[0]["lr"],
            "teacher_momentum": momentum,
            "teacher_temp": teacher_temperature(criterion, epoch),
            "images_per_s": float(totals[2]) / max(epoch_time, 1e-9),
            "epoch_time_s": epoch_time,
            "resumed_from": resumed_from,
        }
        history.append(dict(metrics))
        if rank == 0:
            log.info(
                "[weldray pretrain] epoch %d/%d DINO loss %.4f teacher temp %.3f momentum %.4f %.1f img/s %.0fs",
                epoch + 1, epochs, metrics["loss"], metrics["teacher_temp"], momentum, metrics["images_per_s"],
                epoch_time,
            )
            if config.get("progress") is not None:  # the driver's epoch bar (weldray.training.progress)
                config["progress"].put_nowait(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "student": inner.state_dict(),
                        "teacher": teacher.state_dict(),
                        "criterion": criterion.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "history": history,
                    },
                    os.path.join(tmp, STATE_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
