"""The quality gate: a teacher keeps a synthetic image only when it sees the intended class, and images that
repeat a real photo are dropped.

Teacher: logistic regression on frozen features of the configured backbone (``model.*``, its offline pretrained
weights), fitted on exactly the real rows the training of this config trains on, so no held-out photo (test
split, CV fold) influences which synthetic images survive. It costs one forward pass per photo (seconds on
CPU) instead of a training run, and its cross-validated accuracy on those rows is reported beside the gate's
verdicts so a user can judge how much the gate knows.

Near-duplicates: a synthetic image within ``data.near_duplicate_distance`` bits (``data.hash_method``, as
ingest groups photos) of a real train photo other than its own sources is dropped (a generator that reproduced
some other photo adds a copy, not an example). A copy-paste image is by design close to its own background
photo; lineage keeps it with that photo's fold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from weldray.config import WeldrayConfig

log = logging.getLogger(__name__)


class Teacher:
    """Frozen backbone + standardised logistic regression, fitted on real train rows."""

    def __init__(self, cfg: WeldrayConfig, rows: pd.DataFrame) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from weldray.preprocessing import ImageError, load_image
        from weldray.training.trainer import initial_model

        self.cfg, self.classes = cfg, cfg.data.labels
        self.model = initial_model(cfg, self.classes).eval()
        images, used = [], []
        for i, path in enumerate(rows["path"]):
            try:
                images.append(np.asarray(load_image(path)))
                used.append(i)
            except (ImageError, OSError) as exc:  # broken since ingest: the teacher learns without it
                log.warning("teacher: skipping %s: %s", path, exc)
        rows = rows.iloc[used]
        if rows["label"].nunique() < 2:
            raise ValueError(f"the gate's teacher needs train photos of both classes, got {rows['label'].unique()}")
        feats = self.features(images)
        y = rows["label_index"].to_numpy()

        def classifier() -> Any:
            return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))

        self.clf = classifier().fit(feats, y)
        folds = int(min(5, np.bincount(y).min()))
        self.cv_accuracy = (
            float(cross_val_score(classifier(), feats, y, cv=folds, scoring="balanced_accuracy").mean())
            if folds >= 2 else float("nan")
        )
        self.train_ids = sorted(rows["relpath"])

    def features(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        import torch
        from PIL import Image

        from weldray.preprocessing import resize_for_model

        size, out = self.cfg.model.image_size, []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = np.stack([resize_for_model(Image.fromarray(a), size).transpose(2, 0, 1)
                              for a in images[i : i + batch_size]]).astype(np.float32)
                t = torch.from_numpy(x)
                out.append(self.model.backbone((t - self.model.mean) / self.model.std).flatten(1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def confidence(self, images: list[np.ndarray], labels: list[str]) -> np.ndarray:
        """The teacher's probability of each image's intended label."""
        if not images:
            return np.zeros(0)
        proba = self.clf.predict_proba(self.features(images))
        cols = [list(self.clf.classes_).index(self.classes.index(lbl)) for lbl in labels]
        return proba[np.arange(len(images)), cols]


@dataclass
class Verdict:
    accepted: bool
    teacher_confidence: float
    nearest_real_distance: int  # Hamming bits to the closest real train photo that is not a source
    reason: str


def nearest_distances(images: list[np.ndarray], source_ids: list[list[str]], rows: pd.DataFrame,
                      method: str) -> np.ndarray:
    """Hamming distance of each image's hash to the nearest real train photo outside its sources (64: none)."""
    from PIL import Image

    from weldray.data.splits import perceptual_hashes

    real = np.array([int(h, 16) for h in rows["phash"]], dtype=np.uint64)
    ids = rows["relpath"].to_numpy()
    out = np.full(len(images), 64, dtype=np.int64)
    for i, (img, sources) in enumerate(zip(images, source_ids, strict=True)):
        h = np.uint64(perceptual_hashes(Image.fromarray(img), method)[0])
        bits = np.array([bin(int(v)).count("1") for v in np.bitwise_xor(real, h)])
        bits[np.isin(ids, sources)] = 64
        out[i] = int(bits.min()) if len(bits) else 64
    return out


def judge(teacher: Teacher | None, images: list[np.ndarray], labels: list[str], source_ids: list[list[str]],
          rows: pd.DataFrame, cfg: WeldrayConfig) -> list[Verdict]:
    """One verdict per image (teacher None: synthetic.min_teacher_confidence=0, the teacher is not consulted)."""
    conf = teacher.confidence(images, labels) if teacher is not None else np.full(len(images), np.nan)
    dist = nearest_distances(images, source_ids, rows, cfg.data.hash_method)
    threshold, near = cfg.synthetic.min_teacher_confidence, cfg.data.near_duplicate_distance
    verdicts = []
    for c, d in zip(conf, dist, strict=True):
        if d <= near:
            reason = f"near-duplicate of a real train photo ({d} bits <= data.near_duplicate_distance={near})"
        elif teacher is not None and c < threshold:
            reason = f"teacher confidence {c:.2f} < synthetic.min_teacher_confidence={threshold}"
        else:
            reason = ""
        verdicts.append(Verdict(not reason, float(c), int(d), reason))
    return verdicts


def acceptance(records: pd.DataFrame) -> dict[str, Any]:
    """Per intended class: generated, accepted, acceptance rate, and why the rest were dropped."""
    out: dict[str, Any] = {}
    for label, g in records[records["status"] == "ok"].groupby("label"):
        n, kept = len(g), int(g["accepted"].sum())
        reasons = g.loc[~g["accepted"], "gate_reason"].str.split(" ").str[0].value_counts()
        out[str(label)] = {"generated": n, "accepted": kept, "acceptance_rate": round(kept / n, 4) if n else 0.0,
                           "dropped_by": {str(k): int(v) for k, v in reasons.items()}}
    return out
