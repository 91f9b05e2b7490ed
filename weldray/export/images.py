"""Which real images the parity check and INT8 calibration use.

Order: ``export.check_images`` (folder or manifest.parquet) -> the run's own dataset manifest
(found by its sha256 under ``<output_dir>/datasets``) -> ``data.root``. Parity images come from the
manifest's held-out splits, calibration images from its training split, and the INT8 gate checks
every other image (``export.int8_check_images`` caps it): never one the quantiser calibrated on, or
the gate would grade the INT8 model on its own calibration data.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from weldray.config import WeldrayConfig

log = logging.getLogger(__name__)


class NoCheckImagesError(FileNotFoundError):
    """No real images are available for the parity check."""


@dataclass
class CheckImages:
    parity: list[str]
    calibration: list[str]
    # The INT8 agreement gate's images: disjoint from ``calibration``.
    gate: list[str]
    source: str


def _spread(paths: list[str], n: int, seed: int) -> list[str]:
    """n paths in a fixed shuffled order (same picks on every run)."""
    picked = sorted(paths)
    random.Random(seed).shuffle(picked)
    return picked[:n]


def _from_manifest(path: Path, cfg: WeldrayConfig) -> CheckImages:
    from weldray.data import load_manifest

    df = load_manifest(path)
    held_out = df[df["split"].isin(["val", "test"])]["path"].tolist()
    train = df[df["split"] == "train"]["path"].tolist()
    parity = _spread(held_out, cfg.export.parity_images, cfg.seed)
    if len(parity) < cfg.export.parity_images:  # small manifests: top up from train
        parity += _spread(
            [p for p in train if p not in parity], cfg.export.parity_images - len(parity), cfg.seed
        )
    calibration = _spread(train or held_out, cfg.export.calibration_images, cfg.seed + 1)
    return CheckImages(parity, calibration, _gate(df["path"].tolist(), calibration, cfg), f"manifest {path}")


def _gate(paths: list[str], calibration: list[str], cfg: WeldrayConfig) -> list[str]:
    rest = [p for p in paths if p not in set(calibration)]
    return _spread(rest, cfg.export.int8_check_images or len(rest), cfg.seed + 2)


def _from_folder(root: str, cfg: WeldrayConfig) -> CheckImages:
    from weldray.data.layout import image_files

    files = image_files(root, cfg.data)
    if not files:
        raise NoCheckImagesError(f"no images with extensions {cfg.data.extensions} under {root}")
    shuffled = _spread(files, len(files), cfg.seed)
    parity = shuffled[: cfg.export.parity_images]
    rest = shuffled[len(parity) :] or shuffled
    calibration = rest[: cfg.export.calibration_images]
    return CheckImages(parity, calibration, _gate(files, calibration, cfg), f"folder {root}")


def _from_source(source: str, cfg: WeldrayConfig) -> CheckImages:
    if source.endswith(".parquet") or (
        not source.startswith("s3://") and (Path(source) / "manifest.parquet").is_file()
    ):
        path = Path(source)
        return _from_manifest(path if path.suffix == ".parquet" else path / "manifest.parquet", cfg)
    return _from_folder(source, cfg)


def find_run_manifest(manifest_sha256: str, cfg: WeldrayConfig) -> Path | None:
    """The manifest.parquet whose content hash the checkpoint recorded, if it is still on disk."""
    if not manifest_sha256:
        return None
    from weldray.data import manifest_sha256 as sha

    candidates = []
    if cfg.data.manifest_dir:
        candidates.append(Path(cfg.data.manifest_dir) / "manifest.parquet")
    candidates += sorted((Path(cfg.output_dir) / "datasets").glob("*/manifest.parquet"))
    for path in candidates:
        if path.is_file() and sha(path) == manifest_sha256:
            return path
    return None


def select_check_images(cfg: WeldrayConfig, manifest_sha256: str = "") -> CheckImages:
    """Real images for parity and calibration, per the order in the module docstring."""
    if cfg.export.check_images:
        return _from_source(cfg.export.check_images, cfg)
    manifest = find_run_manifest(manifest_sha256, cfg)
    if manifest is not None:
        return _from_manifest(manifest, cfg)
    if cfg.data.root:
        log.warning(
            "the run's manifest (sha256 %s) was not found; checking on data.root=%s",
            manifest_sha256[:12] or "?",
            cfg.data.root,
        )
        return _from_source(cfg.data.root, cfg)
    raise NoCheckImagesError(
        "no real images for the parity check: the run's dataset manifest "
        f"(sha256 {manifest_sha256[:12] or 'not recorded'}) is not under {cfg.output_dir}/datasets; "
        "pass export.check_images=FOLDER_OR_MANIFEST (e.g. the real weld photos) or data.root=..."
    )
