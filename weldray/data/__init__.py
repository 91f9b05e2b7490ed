"""Datasets: ingest with leakage-safe splits, manifests, the Ray Data reader, the procedural sample.

Attributes load lazily so that ``weldray --help`` does not import pandas, scikit-learn or Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "MANIFEST_COLUMNS": "weldray.data.manifest",
    "IngestResult": "weldray.data.manifest",
    "Reject": "weldray.data.manifest",
    "ingest": "weldray.data.manifest",
    "load_manifest": "weldray.data.manifest",
    "manifest_sha256": "weldray.data.manifest",
    "resolve_dataset": "weldray.data.manifest",
    "read_manifest_dataset": "weldray.data.ray_dataset",
    "select_rows": "weldray.data.ray_dataset",
}

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

if TYPE_CHECKING:
    from weldray.data.manifest import (
        MANIFEST_COLUMNS,
        IngestResult,
        Reject,
        ingest,
        load_manifest,
        manifest_sha256,
        resolve_dataset,
    )
    from weldray.data.ray_dataset import read_manifest_dataset, select_rows


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weldray.data' has no attribute {name!r}")
