"""Datasets: ingest with leakage-safe splits, manifests, the Ray Data reader, the procedural sample."""

from weldray.data.ingest import (
    MANIFEST_COLUMNS,
    IngestResult,
    Reject,
    ingest,
    load_manifest,
    manifest_sha256,
    resolve_dataset,
)
from weldray.data.ray_dataset import read_manifest_dataset, select_rows

__all__ = [
    "MANIFEST_COLUMNS",
    "IngestResult",
    "Reject",
    "ingest",
    "load_manifest",
    "manifest_sha256",
    "read_manifest_dataset",
    "resolve_dataset",
    "select_rows",
]
