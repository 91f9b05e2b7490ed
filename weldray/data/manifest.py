"""Dataset ingest: scan class folders, validate every file, hash, group and split.

Writes per dataset (``<manifest_dir>/``): ``manifest.parquet`` (one row per usable image),
``rejects.parquet`` (path + reason for every file that could not be used), ``summary.json`` and
``split_report.md``. Nothing is silently dropped: every file found is either in the manifest
or in the rejects.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from weldray import io
from weldray.config import DataConfig, WeldrayConfig
from weldray.data.procedural import MASK_DIRS
from weldray.data.splits import assign_splits, group_near_duplicates, perceptual_hashes
from weldray.preprocessing import ImageError, decode_image, sniff_format

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "path", "relpath", "label", "label_index", "sha256", "width", "height", "format",
    "phash", "group", "label_conflict", "split", "fold",
]


@dataclass
class Reject:
    path: str
    reason: str


@dataclass
class IngestResult:
    root: str
    manifest_dir: Path
    n_images: int
    per_label: dict[str, int]
    split_counts: dict[str, dict[str, int]]
    rejects: list[Reject] = field(default_factory=list)
    near_duplicate_groups: list[list[str]] = field(default_factory=list)
    label_conflicts: list[dict[str, object]] = field(default_factory=list)
    mixed_label_groups: list[list[str]] = field(default_factory=list)
    ignored_folders: list[str] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.manifest_dir / "manifest.parquet"

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["manifest_dir"] = str(self.manifest_dir)
        return out


@dataclass
class _Inspected:
    path: str
    relpath: str
    label: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    hashes: tuple[int, ...] = ()
    reject: str | None = None


def default_manifest_dir(root: str, cfg: WeldrayConfig) -> Path:
    """``<output_dir>/datasets/<folder name>-<hash of the root URI>`` unless configured."""
    if cfg.data.manifest_dir:
        return Path(cfg.data.manifest_dir)
    uri = root if io.is_s3(root) else str(Path(root).expanduser().resolve())
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    return Path(cfg.output_dir) / "datasets" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"


def _inspect(path: str, relpath: str, label: str, data_cfg: DataConfig) -> _Inspected:
    item = _Inspected(path=path, relpath=relpath, label=label)
    suffix = Path(relpath).suffix.lower()
    if suffix not in {e.lower() for e in data_cfg.extensions}:
        item.reject = f"not an image file (extension '{suffix or '(none)'}' is not in data.extensions)"
        return item
    try:
        raw = io.read_bytes(path, data_cfg.s3_endpoint_url)
    except OSError as exc:
        item.reject = f"unreadable: {exc}"
        return item
    if not raw:
        item.reject = "zero-byte file"
        return item
    item.sha256 = hashlib.sha256(raw).hexdigest()
    try:
        img = decode_image(raw, max_pixels=data_cfg.max_pixels)
    except ImageError as exc:
        item.reject = exc.reason
        return item
    item.width, item.height = img.size
    item.format = sniff_format(raw) or ""
    if min(img.size) < data_cfg.min_side:
        item.reject = f"too small ({img.width}x{img.height}; data.min_side is {data_cfg.min_side})"
        return item
    item.hashes = perceptual_hashes(img, data_cfg.hash_method)
    return item


def _scan(root: str, data_cfg: DataConfig) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(uri, relpath, label) for every file in a class folder, plus top-level folders not mapped."""
    fs, base = io.filesystem(root, data_cfg.s3_endpoint_url)
    import pyarrow.fs as pafs

    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"dataset root {root} is not a folder or S3 prefix")
    top = fs.get_file_info(pafs.FileSelector(base))
    ignored = sorted(
        i.base_name for i in top if i.type == pafs.FileType.Directory and i.base_name not in data_cfg.classes
        and not i.base_name.startswith((".", "_")) and i.base_name not in MASK_DIRS
    )
    found: list[tuple[str, str, str]] = []
    for folder, label in data_cfg.classes.items():
        folder_uri = io.join(root, folder)
        if not io.exists(folder_uri, data_cfg.s3_endpoint_url):
            log.warning("class folder %s is missing", folder_uri)
            continue
        for uri in io.list_files(folder_uri, endpoint_url=data_cfg.s3_endpoint_url):
            rel = uri[len(folder_uri.rstrip("/")) + 1 :] if io.is_s3(root) else str(Path(uri).relative_to(
                Path(folder_uri).resolve()))
            found.append((uri, f"{folder}/{rel}", label))
    if not any(label for _, _, label in found):
        raise FileNotFoundError(
            f"no files under {root} in the class folders {', '.join(data_cfg.classes)} (set data.classes to map yours)"
        )
    return found, ignored


def ingest(root: str, cfg: WeldrayConfig, *, progress: bool = False) -> IngestResult:
    """Scan ``root`` (folder or s3:// URI), validate, group, split, and write the manifest files."""
    data_cfg = cfg.data
    found, ignored = _scan(root, data_cfg)
    labels_order = data_cfg.labels

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda f: _inspect(f[0], f[1], f[2], data_cfg), found)
        if progress:
            from rich.progress import track

            results = track(results, total=len(found), description=f"ingest {len(found)} files", transient=True)
        items = list(results)

    rejects = [Reject(i.relpath, i.reject) for i in items if i.reject]
    good = [i for i in items if not i.reject]
    for r in rejects:
        log.warning("rejected %s: %s", r.path, r.reason)
    if not good:
        raise ValueError(f"no usable images under {root}: {len(rejects)} files rejected")

    df = pd.DataFrame(
        {
            "path": [i.path for i in good],
            "relpath": [i.relpath for i in good],
            "label": [i.label for i in good],
            "label_index": [labels_order.index(i.label) for i in good],
            "sha256": [i.sha256 for i in good],
            "width": [i.width for i in good],
            "height": [i.height for i in good],
            "format": [i.format for i in good],
            "phash": [f"{i.hashes[0]:016x}" for i in good],
        }
    )
    hashes = np.array([i.hashes for i in good], dtype=np.uint64)
    roots = group_near_duplicates(hashes, df["sha256"].tolist(), data_cfg.near_duplicate_distance)
    first_member = {r: df["relpath"].iloc[r] for r in set(roots.tolist())}
    df["group"] = [hashlib.sha256(first_member[r].encode()).hexdigest()[:12] for r in roots]

    # Exact copies under two labels: the label is unknowable, keep them out of every split.
    labels_by_sha: dict[str, set[str]] = defaultdict(set)
    for digest, label in zip(df["sha256"], df["label"], strict=True):
        labels_by_sha[digest].add(label)
    conflict_shas = {d for d, ls in labels_by_sha.items() if len(ls) > 1}
    df["label_conflict"] = df["sha256"].isin(conflict_shas)
    label_conflicts = [
        {"sha256": d, "files": sorted(df.loc[df["sha256"] == d, "relpath"]), "labels": sorted(labels_by_sha[d])}
        for d in sorted(conflict_shas)
    ]

    usable = ~df["label_conflict"].to_numpy()
    split = np.array(["excluded"] * len(df), dtype=object)
    folds = np.full(len(df), -1, dtype=np.int64)
    s, f = assign_splits(
        df.loc[usable, "label"].to_numpy(),
        df.loc[usable, "group"].to_numpy(),
        val_fraction=data_cfg.val_fraction,
        test_fraction=data_cfg.test_fraction,
        n_folds=data_cfg.n_folds,
        seed=data_cfg.split_seed,
    )
    split[usable] = s
    folds[usable] = f
    df["split"] = split.astype(str)
    df["fold"] = folds
    df = df[MANIFEST_COLUMNS]

    groups = df.groupby("group")
    near_dups = sorted(sorted(g["relpath"]) for _, g in groups if len(g) > 1)
    mixed = sorted(sorted(g["relpath"]) for _, g in groups if g["label"].nunique() > 1)
    split_counts = {
        sp: {label: int(n) for label, n in Counter(df.loc[df["split"] == sp, "label"]).items()}
        for sp in ("train", "val", "test", "excluded")
    }
    result = IngestResult(
        root=root,
        manifest_dir=default_manifest_dir(root, cfg),
        n_images=len(df),
        per_label={label: int((df["label"] == label).sum()) for label in labels_order},
        split_counts=split_counts,
        rejects=rejects,
        near_duplicate_groups=near_dups,
        label_conflicts=label_conflicts,
        mixed_label_groups=mixed,
        ignored_folders=ignored,
    )
    _write(result, df, cfg)
    return result


def _write(result: IngestResult, df: pd.DataFrame, cfg: WeldrayConfig) -> None:
    from weldray.data.report import split_report_markdown

    out = result.manifest_dir
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "manifest.parquet", index=False)
    pd.DataFrame([asdict(r) for r in result.rejects], columns=["path", "reason"]).to_parquet(
        out / "rejects.parquet", index=False
    )
    summary = result.to_json()
    summary["n_folds"] = cfg.data.n_folds
    summary["fold_counts"] = {int(k): int(v) for k, v in Counter(df["fold"]).items() if k >= 0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "split_report.md").write_text(split_report_markdown(result, df))


def load_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest written by :func:`ingest` (a ``manifest.parquet`` file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}; run `weldray ingest DATA` first")
    df = pd.read_parquet(path)
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path} is not a weldray manifest (missing columns {sorted(missing)})")
    return df


def manifest_sha256(path: str | Path) -> str:
    """Content hash of a manifest file, recorded by training and export for lineage."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_dataset(cfg: WeldrayConfig, *, progress: bool = False) -> Path:
    """The manifest for ``cfg.data.root``: an existing manifest as is, a folder/URI ingested,
    and with no root the procedural sample (generated on first use)."""
    root = cfg.data.root
    if root is None:
        from weldray.data.procedural import ProceduralSpec, generate_dataset

        p = cfg.data.procedural
        spec = ProceduralSpec(n_per_class=p.n_per_class, image_size=p.image_size,
                              text_fraction=p.text_fraction, seed=p.seed)
        root = str(generate_dataset(p.out_dir, spec, progress=progress))
    elif root.endswith(".parquet"):
        load_manifest(root)
        return Path(root)
    elif not io.is_s3(root) and (Path(root) / "manifest.parquet").is_file():
        return Path(root) / "manifest.parquet"
    return ingest(root, cfg, progress=progress).manifest_path
