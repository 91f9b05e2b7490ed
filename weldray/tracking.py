"""MLflow without a server, for training (``training.log_mlflow``) and sweeps (``sweep.mlflow``)."""

from __future__ import annotations

import os


def allow_file_store(uri: str) -> str:
    """Return ``uri``; when it is a ``file:`` store, let MLflow 3 use it in this process. MLflow 3 keeps the file
    store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set, but a folder beside the
    run is what tracking without a server or network needs (a ``sqlite:`` URI is the alternative)."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri
