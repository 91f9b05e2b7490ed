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
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from weldray import io
from weldray.config import ConfigError, DataConfig, WeldrayConfig
from weldray.data.labels import (
    Box,
    LabelError,
    boxes_to_json,
    export_label_path,
    image_label,
    parse_yolo,
    read_class_names,
)
from weldray.data.procedural import MASK_DIRS
from weldray.data.splits import assign_splits, group_near_duplicates, perceptual_hashes
from weldray.preprocessing import ImageError, decode_image, sniff_format

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "path", "relpath", "label", "label_index", "sha256", "width", "height", "format",
    "phash", "group", "label_conflict", "split", "fold", "boxes",
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
    # YOLO boxes (None: no label file); label_uri: where they come from.
    boxes: list[Box] | None = None
    label_uri: str | None = None
    reject: str | None = None


@dataclass
class _Labels:
    """How this dataset's YOLO labels are found: box class names and, for the export layout, the rule."""

    names: list[str] | None
    export_layout: bool
    files: frozenset[str] = frozenset()


# Data keys that do not change what ingest writes (where it reads from and writes to).
_NOT_INGEST = ("root", "manifest_dir", "s3_endpoint_url", "procedural")


def default_manifest_dir(root: str, cfg: WeldrayConfig) -> Path:
    """``<output_dir>/datasets/<folder name>-<hash of the root URI and the ingest settings>`` unless configured.
    The settings are in the name because ingest rewrites the manifest on every run: two runs on one folder with
    other splits (``data.split_seed``, ``n_folds``, ...) must not overwrite each other's folds mid-run."""
    if cfg.data.manifest_dir:
        return Path(cfg.data.manifest_dir)
    uri = root if io.is_s3(root) else str(Path(root).expanduser().resolve())
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "dataset"
    settings = {k: v for k, v in asdict(cfg.data).items() if k not in _NOT_INGEST}
    key = json.dumps({"uri": uri, **settings}, sort_keys=True, default=str)
    return Path(cfg.output_dir) / "datasets" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _read_boxes(item: _Inspected, labels: _Labels, data_cfg: DataConfig) -> str | None:
    """Fill ``item.boxes`` (and its label in the export layout); a reject reason when the labels are unusable."""
    if item.label_uri is None or item.label_uri not in labels.files:
        if labels.export_layout:
            return f"no YOLO label file (expected {item.label_uri}): its image-level label is unknown"
        return None
    try:
        text = io.read_bytes(item.label_uri, data_cfg.s3_endpoint_url).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"label file unreadable: {item.label_uri}: {exc}"
    try:
        item.boxes = parse_yolo(text, labels.names, item.label_uri)
    except LabelError as exc:
        return f"malformed YOLO label: {exc}"
    if labels.export_layout:
        item.label = image_label(item.boxes, data_cfg.yolo_label_rule, data_cfg.yolo_default_label)
    return None


def _inspect(path: str, relpath: str, label: str, label_uri: str | None, labels: _Labels,
             data_cfg: DataConfig) -> _Inspected:
    item = _Inspected(path=path, relpath=relpath, label=label, label_uri=label_uri)
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
    item.reject = _read_boxes(item, labels, data_cfg)
    return item


def _scan_export_layout(root: str, data_cfg: DataConfig) -> tuple[list[tuple[str, str, str, str | None]], _Labels]:
    """The YOLO export layout: every file under an ``images`` folder, labelled by its boxes."""
    names = read_class_names([io.join(root, "data.yaml")], data_cfg.s3_endpoint_url)
    known = set(data_cfg.labels)
    for label in [*data_cfg.yolo_label_rule, data_cfg.yolo_default_label]:
        if label not in known:
            key = "data.yolo_default_label" if label == data_cfg.yolo_default_label else "data.yolo_label_rule"
            raise ConfigError(key, f"label {label!r} is not one of data.classes' labels {sorted(known)}")
    found = []
    files = io.list_files(root, endpoint_url=data_cfg.s3_endpoint_url)
    base = root.rstrip("/") if io.is_s3(root) else str(Path(root).expanduser().resolve())
    for uri in files:
        rel = uri[len(base) + 1 :]
        label_rel = export_label_path(rel)
        if label_rel is not None:
            found.append((uri, rel, data_cfg.yolo_default_label, io.join(base, label_rel)))
    if not found:
        raise FileNotFoundError(f"{root} has data.yaml but no images/ folder (YOLO export layout)")
    return found, _Labels(names, export_layout=True, files=frozenset(files))


def _scan(root: str, data_cfg: DataConfig) -> tuple[list[tuple[str, str, str, str | None]], list[str], _Labels]:
    """(uri, relpath, label, label file) for every file in a class folder, top-level folders not mapped, and
    the dataset's labels."""
    fs, base = io.filesystem(root, data_cfg.s3_endpoint_url)
    import pyarrow.fs as pafs

    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"dataset root {root} is not a folder or S3 prefix")
    top = fs.get_file_info(pafs.FileSelector(base))
    ignored = sorted(
        i.base_name for i in top if i.type == pafs.FileType.Directory and i.base_name not in data_cfg.classes
        and not i.base_name.startswith((".", "_")) and i.base_name not in MASK_DIRS
        and i.base_name != data_cfg.labels_dir
    )
    if not any(io.exists(io.join(root, f), data_cfg.s3_endpoint_url) for f in data_cfg.classes) and io.exists(
        io.join(root, "data.yaml"), data_cfg.s3_endpoint_url
    ):
        found, labels = _scan_export_layout(root, data_cfg)
        return found, [i for i in ignored if i not in ("images", "labels")], labels
    # Absolute, as io.list_files names the label files it finds (a relative root would never match them).
    labels_root = io.join(root if io.is_s3(root) else str(Path(root).expanduser().resolve()), data_cfg.labels_dir)
    labels = _Labels(None, export_layout=False)
    if io.exists(labels_root, data_cfg.s3_endpoint_url):
        names = read_class_names(
            [io.join(labels_root, "data.yaml"), io.join(root, "data.yaml")], data_cfg.s3_endpoint_url
        )
        files = io.list_files(labels_root, [".txt"], data_cfg.s3_endpoint_url)
        labels = _Labels(names, export_layout=False, files=frozenset(files))
    found: list[tuple[str, str, str, str | None]] = []
    for folder, label in data_cfg.classes.items():
        folder_uri = io.join(root, folder)
        if not io.exists(folder_uri, data_cfg.s3_endpoint_url):
            log.warning("class folder %s is missing", folder_uri)
            continue
        for uri in io.list_files(folder_uri, endpoint_url=data_cfg.s3_endpoint_url):
            rel = uri[len(folder_uri.rstrip("/")) + 1 :] if io.is_s3(root) else str(Path(uri).relative_to(
                Path(folder_uri).resolve()))
            label_uri = io.join(labels_root, folder, str(PurePosixPath(rel).with_suffix(".txt")))
            found.append((uri, f"{folder}/{rel}", label, label_uri if labels.files else None))
    if not found:
        raise FileNotFoundError(
            f"no files under {root} in the class folders {', '.join(data_cfg.classes)} (set data.classes to map yours)"
        )
    return found, ignored, labels


def ingest(root: str, cfg: WeldrayConfig, *, progress: bool = False) -> IngestResult:
    """Scan ``root`` (folder or s3:// URI), validate, group, split, and write the manifest files."""
    data_cfg = cfg.data
    try:
        found, ignored, labels = _scan(root, data_cfg)
    except LabelError as exc:
        raise ValueError(f"YOLO labels of {root}: {exc}") from None
    labels_order = data_cfg.labels

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(lambda f: _inspect(*f, labels, data_cfg), found)
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
    # Relative YOLO boxes as JSON (weldray.data.labels.boxes_from_json); None: the image has no label file.
    boxes = [boxes_to_json(i.boxes) for i in good]
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
    df["boxes"] = pd.Series(boxes, dtype=object)
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
    """Each file whole, through a temp file and a rename (:func:`weldray.io.write_bytes`): every command that
    resolves a folder ingests it again, so parallel runs (sweep trials, one process per fold) rewrite the manifest
    while others read it."""
    from weldray.data.report import split_report_markdown
    from weldray.io import write_bytes

    out = result.manifest_dir
    write_bytes(out / "manifest.parquet", df.to_parquet(index=False))
    rejects = pd.DataFrame([asdict(r) for r in result.rejects], columns=["path", "reason"])
    write_bytes(out / "rejects.parquet", rejects.to_parquet(index=False))
    summary = result.to_json()
    summary["n_folds"] = cfg.data.n_folds
    summary["fold_counts"] = {int(k): int(v) for k, v in Counter(df["fold"]).items() if k >= 0}
    labelled = df["boxes"].dropna()
    summary["box_labels"] = {
        "images_with_labels": int(len(labelled)),
        "boxes_per_class": dict(Counter(b["cls"] for value in labelled for b in json.loads(value))),
    }
    write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    write_bytes(out / "split_report.md", split_report_markdown(result, df).encode())


def load_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest written by :func:`ingest` (a ``manifest.parquet`` file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}; run `weldray ingest DATA` first")
    df = pd.read_parquet(path)
    if "boxes" not in df.columns:  # manifests written before box labels
        df["boxes"] = None
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
