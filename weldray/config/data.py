"""Data ingest and split configuration (``data.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from weldray.config._base import ConfigError, check_choice, check_fraction, check_positive

HASH_METHODS = ("phash", "dhash", "ahash", "whash")


@dataclass
class ProceduralConfig:
    """The generated default dataset, used when ``data.root`` is not set."""

    out_dir: str = "data/procedural"
    n_per_class: int = 60
    image_size: int = 320
    text_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("data.procedural.n_per_class", self.n_per_class)
        if self.image_size < 64:
            raise ConfigError("data.procedural.image_size", f"must be >= 64, got {self.image_size}")
        check_fraction("data.procedural.text_fraction", self.text_fraction, inclusive_high=True)


@dataclass
class DataConfig:
    # A folder, an s3:// URI, or a manifest.parquet; None means the procedural sample.
    root: Optional[str] = None
    # Class folder name -> label. Labels are ordered by first appearance for class indices.
    classes: dict[str, str] = field(
        default_factory=lambda: {"good_welds": "good_weld", "bad_welds": "bad_weld"}
    )
    extensions: list[str] = field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"]
    )
    # Where manifests go; None -> <output_dir>/datasets/<name>-<hash of root and the ingest settings>.
    manifest_dir: Optional[str] = None
    # Near-duplicate grouping: perceptual hash and max Hamming distance (64-bit hashes).
    hash_method: str = "phash"
    near_duplicate_distance: int = 8
    # Held-out fractions (by group, stratified by label) and cross-validation folds.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    n_folds: int = 5
    split_seed: int = 42
    # Images smaller than this on either side are rejected as unusable.
    min_side: int = 32
    # Decompression-bomb guard for ingest (pixels).
    max_pixels: int = 64_000_000
    # S3-compatible endpoint (MinIO, moto, ...); None -> AWS_ENDPOINT_URL or AWS itself.
    s3_endpoint_url: Optional[str] = None
    # YOLO box labels: ``<labels_dir>/<class folder>/<stem>.txt`` beside the class folders (read when present).
    labels_dir: str = "labels"
    # YOLO export layout (data.yaml + images/ + labels/, no class folders): an image takes the first label
    # whose box classes it holds, else yolo_default_label.
    yolo_label_rule: dict[str, list[str]] = field(default_factory=lambda: {"bad_weld": ["Bad Weld", "Defect"]})
    yolo_default_label: str = "good_weld"
    procedural: ProceduralConfig = field(default_factory=ProceduralConfig)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("data.classes", "needs at least one folder -> label entry")
        if len(set(self.classes.values())) < 2:
            raise ConfigError("data.classes", f"needs at least two distinct labels, got {dict(self.classes)}")
        check_choice("data.hash_method", self.hash_method, HASH_METHODS)
        if not 0 <= self.near_duplicate_distance <= 32:
            raise ConfigError(
                "data.near_duplicate_distance", f"must be in [0, 32] bits, got {self.near_duplicate_distance}"
            )
        check_fraction("data.val_fraction", self.val_fraction)
        check_fraction("data.test_fraction", self.test_fraction)
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                "data.val_fraction",
                f"val_fraction + test_fraction must leave >= 10% for training, got "
                f"{self.val_fraction} + {self.test_fraction}",
            )
        if self.n_folds < 2:
            raise ConfigError("data.n_folds", f"must be >= 2, got {self.n_folds}")
        check_positive("data.min_side", self.min_side)
        check_positive("data.max_pixels", self.max_pixels)
        if not self.labels_dir or "/" in self.labels_dir:
            raise ConfigError("data.labels_dir", f"must be a folder name, got {self.labels_dir!r}")
        for ext in self.extensions:
            if not ext.startswith("."):
                raise ConfigError("data.extensions", f"entries must start with '.', got {ext!r}")

    @property
    def labels(self) -> list[str]:
        """Class labels in index order (first appearance in ``classes``)."""
        return list(dict.fromkeys(self.classes.values()))
