"""Which files of a dataset folder are the photos: the class folders, never side folders."""

from __future__ import annotations

import logging

from weldray import io
from weldray.config import DataConfig

log = logging.getLogger(__name__)


def image_files(root: str, data_cfg: DataConfig) -> list[str]:
    """Image files in ``root``'s class folders (``data.classes``), or in all of ``root`` when it has none.

    Side folders (the procedural sample's masks, earlier outputs) are never read as photos.
    """
    endpoint = data_cfg.s3_endpoint_url
    folders = [io.join(root, c) for c in data_cfg.classes if io.exists(io.join(root, c), endpoint)]
    if not folders:
        log.info("no class folders (%s) under %s: using every image in it", ", ".join(data_cfg.classes), root)
        folders = [root]
    return [f for folder in folders for f in io.list_files(folder, data_cfg.extensions, endpoint)]
