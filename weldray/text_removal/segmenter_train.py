"""Train :class:`~weldray.text_removal.segmenter.TextSegNet` on procedural text with exact glyph masks.

Training images come from :func:`weldray.data.procedural.render_weld` with seed ``SEGMENTER_SEED``, which no
evaluation uses (``evaluate_procedural`` and the tests score seeds 0-7, the default dataset is seed 0), and,
when ``backgrounds`` is given, from procedural text composited onto square crops of real photos. Trained on
procedural welds alone the network calls real specular highlights and speckled plates text (it fired on
nearly every real photo), so real photos are needed as background: of the folder's photos, those where the
OCR detector finds no text are split by a hash of their name, ``background_holdout`` of them are kept out of
training (the validation renders use those, and the false-positive figures in docs/measurements.md are measured
on them), and the rest are training backgrounds. Renders vary in size (0.7-1.3x the segmenter's 640 px input, i.e.
text scale) and half are JPEG re-saved, as real photos are.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from weldray.text_removal.segmenter import INPUT_SIDE, STRIDE, build_textseg, to_tensor

log = logging.getLogger(__name__)

#: Seed of every training render (``default_rng([SEGMENTER_SEED, i])``); validation uses ``SEGMENTER_SEED + 1``.
SEGMENTER_SEED = 20261201


@dataclass
class SegmenterTrainConfig:
    """Scale of one training run; the defaults made the shipped ``weights/textseg.pt``."""

    renders: int = 2400
    crops_per_render: int = 2
    crop: int = 320
    steps: int = 3000
    batch_size: int = 16
    lr: float = 3e-3
    width: int = 16
    text_fraction: float = 0.85
    val_renders: int = 64
    workers: int = 2
    backgrounds: str | None = None
    background_fraction: float = 0.6
    background_holdout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("renders", "crops_per_render", "steps", "batch_size", "width", "val_renders", "workers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.crop % (4 * STRIDE) or self.crop < 64:
            raise ValueError(f"crop must be a multiple of {4 * STRIDE} and >= 64, got {self.crop}")
        for key in ("text_fraction", "background_fraction", "background_holdout"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must lie in [0, 1], got {getattr(self, key)}")


def cell_targets(mask: np.ndarray) -> np.ndarray:
    """Glyph mask (HxW bool, H and W multiples of ``STRIDE``) -> float32 (H/4 x W/4): 1 where a cell holds glyphs."""
    h, w = mask.shape
    return mask.reshape(h // STRIDE, STRIDE, w // STRIDE, STRIDE).any(axis=(1, 3)).astype(np.float32)


def _jpeg(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else img


def _background(rng: np.random.Generator, paths: list[str], size: int) -> np.ndarray:
    """A random square crop of a random photo, resized to ``size`` (at 0.8-1.25x the photo's own scale)."""
    import cv2

    from weldray.io import read_bytes
    from weldray.preprocessing import decode_image

    img = np.asarray(decode_image(read_bytes(paths[int(rng.integers(len(paths)))])))
    h, w = img.shape[:2]
    side = min(h, w, round(size / rng.uniform(0.8, 1.25)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return cv2.resize(img[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)


def render_crops(args: tuple[int, int, SegmenterTrainConfig, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """``crops_per_render`` (image, cell target) crops of render ``index`` of ``seed``; deterministic."""
    import cv2

    from weldray.data.procedural import LABELS, overlay_text, render_weld

    cv2.setNumThreads(1)
    seed, index, cfg, backgrounds = args
    rng = np.random.default_rng([seed, index])
    size = max(cfg.crop, int(INPUT_SIDE * rng.uniform(0.7, 1.3)) // STRIDE * STRIDE)
    with_text = bool(rng.random() < cfg.text_fraction)
    if backgrounds and rng.random() < cfg.background_fraction:
        image = _background(rng, backgrounds, size)
        glyphs = np.zeros((size, size), bool)
        if with_text:
            image, glyphs, _, _ = overlay_text(rng, image)
    else:
        label = LABELS[int(rng.integers(len(LABELS)))]
        sample = render_weld(rng, label=label, size=size, with_text=with_text)
        image, glyphs = sample.image, sample.text_mask
    if rng.random() < 0.5:
        image = _jpeg(rng, image)
    xs, ys = [], []
    for _ in range(cfg.crops_per_render):
        if glyphs.any() and rng.random() < 0.7:  # centre most crops near text: positives are ~3 % of pixels
            yy, xx = np.nonzero(glyphs)
            j = int(rng.integers(len(yy)))
            jitter = cfg.crop // 3
            cy = int(yy[j]) + int(rng.integers(-jitter, jitter))
            cx = int(xx[j]) + int(rng.integers(-jitter, jitter))
        else:
            cy, cx = (int(v) for v in rng.integers(0, size, 2))
        y = int(np.clip(cy - cfg.crop // 2, 0, size - cfg.crop)) // STRIDE * STRIDE
        x = int(np.clip(cx - cfg.crop // 2, 0, size - cfg.crop)) // STRIDE * STRIDE
        xs.append(image[y : y + cfg.crop, x : x + cfg.crop])
        ys.append(cell_targets(glyphs[y : y + cfg.crop, x : x + cfg.crop]))
    return np.stack(xs), np.stack(ys)


def text_free_photos(paths: list[str], *, progress: bool = False) -> list[str]:
    """The photos where the OCR detector (default filters, no segmenter) keeps no text on the first search."""
    from weldray.config import load_config
    from weldray.io import read_bytes
    from weldray.preprocessing import ImageError, decode_image
    from weldray.text_removal.cleaner import TextCleaner

    cleaner = TextCleaner(load_config(["text_removal.segmenter=none"]).text_removal)
    out = []
    for i, p in enumerate(paths, 1):
        try:
            image = np.asarray(decode_image(read_bytes(p)))
        except ImageError as exc:
            log.warning("background %s skipped: %s", p, exc)
            continue
        if not any(d.kept for d in cleaner.find_text(image)):
            out.append(p)
        if progress and (i % 50 == 0 or i == len(paths)):
            log.info("OCR search for text-free backgrounds: %d/%d photos, %d text-free", i, len(paths), len(out))
    return out


def split_backgrounds(paths: list[str], holdout: float) -> dict[str, list[str]]:
    """Deterministic split by a hash of the file name (stable when photos are added or the folder moves)."""
    import hashlib

    def held(p: str) -> bool:
        return int(hashlib.sha256(Path(p).name.encode()).hexdigest()[:8], 16) / 2**32 < holdout

    return {"train": [p for p in paths if not held(p)], "held_out": [p for p in paths if held(p)]}


def _render_set(seed: int, n: int, cfg: SegmenterTrainConfig, backgrounds: list[str]) -> tuple[np.ndarray, np.ndarray]:
    jobs = [(seed, i, cfg, backgrounds) for i in range(n)]
    if cfg.workers == 1:
        parts = [render_crops(j) for j in jobs]
    else:
        # spawn, not fork: the OCR search for backgrounds has started onnxruntime threads in this process
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(render_crops, jobs, chunksize=8))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _loss(logits, target):  # noqa: ANN001, ANN202 - torch tensors
    """BCE + soft Dice: glyph cells are a few percent, BCE alone settles on "no text"."""
    import torch
    from torch.nn import functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


def cell_scores(net, images: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:  # noqa: ANN001
    """Cell recall / precision of glyph cells at ``threshold`` (the validation figures in the weights' metadata)."""
    import torch

    net.eval()
    tp = fp = fn = 0
    with torch.inference_mode():
        for i in range(0, len(images), 16):
            p = torch.sigmoid(net(to_tensor(images[i : i + 16]))[:, 0]).numpy() >= threshold
            t = targets[i : i + 16] > 0.5
            tp, fp, fn = tp + int((p & t).sum()), fp + int((p & ~t).sum()), fn + int((~p & t).sum())
    return {"cell_recall": tp / max(tp + fn, 1), "cell_precision": tp / max(tp + fp, 1)}


def train_segmenter(out: str | Path, cfg: SegmenterTrainConfig, *, progress: bool = False) -> dict[str, object]:
    """Render, train, validate on held-out renders and write ``out`` (fp16 state dict + metadata)."""
    import torch

    from weldray.data.procedural import VERSION
    from weldray.io import list_files

    torch.manual_seed(SEGMENTER_SEED)
    t0 = time.perf_counter()
    split: dict[str, list[str]] = {"train": [], "held_out": []}
    if cfg.backgrounds:
        photos = list_files(cfg.backgrounds, (".jpg", ".jpeg", ".png", ".webp", ".bmp"))
        if not photos:
            raise FileNotFoundError(f"no images under backgrounds folder {cfg.backgrounds}")
        split = split_backgrounds(text_free_photos(photos, progress=progress), cfg.background_holdout)
        log.info("backgrounds: %d text-free photos for training, %d held out", *map(len, split.values()))
    x, y = _render_set(SEGMENTER_SEED, cfg.renders, cfg, split["train"])
    vx, vy = _render_set(SEGMENTER_SEED + 1, cfg.val_renders, cfg, split["held_out"] or split["train"])
    log.info("rendered %d training and %d validation crops in %.0f s", len(x), len(vx), time.perf_counter() - t0)
    net = build_textseg(cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    rng = np.random.default_rng(SEGMENTER_SEED)
    yt = torch.from_numpy(y)[:, None]
    losses: list[float] = []
    t1 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        net.train()
        idx = rng.integers(0, len(x), cfg.batch_size)
        xb, yb = to_tensor(x[idx]), yt[idx]
        if rng.random() < 0.5:
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = _loss(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and (step % 100 == 0 or step == cfg.steps):
            rate = step / (time.perf_counter() - t1)
            log.info(
                "step %d/%d  loss %.4f  (%.2f steps/s, %.0f s left)",
                step, cfg.steps, np.mean(losses[-100:]), rate, (cfg.steps - step) / rate,
            )
    scores = cell_scores(net, vx, vy)
    meta = {
        "width": cfg.width,
        "generator": VERSION,
        "seed": SEGMENTER_SEED,
        "config": asdict(cfg),
        "backgrounds": {k: [Path(p).name for p in v] for k, v in split.items()},
        "initial_loss": float(np.mean(losses[: min(10, len(losses))])),
        "final_loss": float(np.mean(losses[-min(10, len(losses)) :])),
        "train_seconds": round(time.perf_counter() - t0),
        **{f"val_{k}": round(v, 4) for k, v in scores.items()},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, out)
    return meta
