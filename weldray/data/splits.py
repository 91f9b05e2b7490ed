"""Near-duplicate grouping and leakage-safe, label-stratified splits.

Copies of one photo (resized, re-encoded, flipped, video frames) must land in the same split,
or validation accuracy measures memory rather than skill. Images are grouped by exact hash and
by perceptual-hash distance (also against flipped/rotated variants), then groups, not images,
are assigned to splits and folds with scikit-learn's ``StratifiedGroupKFold``.
"""

from __future__ import annotations

from collections import Counter

import imagehash
import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

_HASHERS = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}


def _to_uint64(h: imagehash.ImageHash) -> int:
    return int(str(h), 16)


def perceptual_hashes(img: Image.Image, method: str) -> tuple[int, ...]:
    """64-bit hashes of the image and of its mirror/rotated variants (original first).

    Comparing an image's original hash with another image's variants catches flipped copies,
    which plain perceptual hashes miss.
    """
    hasher = _HASHERS[method]
    small = img.convert("L")
    small.thumbnail((256, 256))
    variants = (
        small,
        small.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        small.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        small.transpose(Image.Transpose.ROTATE_180),
    )
    return tuple(_to_uint64(hasher(v)) for v in variants)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_near_duplicates(
    hashes: np.ndarray, sha256: list[str], max_distance: int, chunk: int = 512
) -> np.ndarray:
    """Connected components of "same file or perceptual distance <= max_distance".

    ``hashes`` is (N, V) uint64 with the original hash in column 0. Returns a root index per image.
    """
    n = len(sha256)
    uf = _UnionFind(n)
    first_by_sha: dict[str, int] = {}
    for i, digest in enumerate(sha256):
        if digest in first_by_sha:
            uf.union(first_by_sha[digest], i)
        else:
            first_by_sha[digest] = i
    if n:
        originals = hashes[:, 0]
        for start in range(0, n, chunk):
            block = originals[start : start + chunk]
            dist = np.bitwise_count(block[:, None, None] ^ hashes[None, :, :]).min(axis=2)
            ii, jj = np.nonzero(dist <= max_distance)
            for i, j in zip(ii + start, jj, strict=True):
                if i != j:
                    uf.union(int(i), int(j))
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def _first_fold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Boolean mask of the first held-out fold of a stratified group k-fold."""
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def _check_groups(labels: np.ndarray, groups: np.ndarray, n_splits: int, what: str) -> None:
    per_label = Counter()
    for label in np.unique(labels):
        per_label[label] = len(np.unique(groups[labels == label]))
    if len(np.unique(groups)) < n_splits:
        raise ValueError(
            f"{what}: {len(np.unique(groups))} independent image groups cannot be split {n_splits} ways; "
            "add images or lower the number of folds / held-out fractions"
        )
    short = {k: v for k, v in per_label.items() if v < n_splits}
    if short:
        raise ValueError(
            f"{what}: each label needs at least {n_splits} independent groups, got {dict(per_label)}; "
            "add images of the short classes"
        )


def assign_splits(
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    n_folds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split names ("train"/"val"/"test") and CV fold ids for every image, grouped and stratified.

    Folds cover the whole pool (for cross-validation); splits are the fixed hold-out scheme.
    Group labels are the majority label of their images.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    group_label = {g: Counter(labels[groups == g]).most_common(1)[0][0] for g in np.unique(groups)}
    strat = np.array([group_label[g] for g in groups])

    _check_groups(strat, groups, n_folds, "cross-validation folds")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), strat, groups)):
        folds[held] = k

    split = np.array(["train"] * len(labels), dtype=object)
    remaining = np.ones(len(labels), dtype=bool)
    if test_fraction > 0:
        k = max(2, round(1 / test_fraction))
        _check_groups(strat, groups, k, "test split")
        split[_first_fold(strat, groups, k, seed)] = "test"
        remaining = split == "train"
    if val_fraction > 0:
        idx = np.nonzero(remaining)[0]
        k = max(2, round((1 - test_fraction) / val_fraction))
        _check_groups(strat[idx], groups[idx], k, "validation split")
        held = _first_fold(strat[idx], groups[idx], k, seed + 1)
        split[idx[held]] = "val"
    return split.astype(str), folds
