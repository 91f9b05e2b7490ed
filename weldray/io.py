"""Local paths and ``s3://`` URIs behind one small API (pyarrow filesystems).

Every stage reads and writes through these helpers so that ``DATA``, ``OUTPUT`` and
``storage_path`` can be a folder or an S3 prefix (AWS, MinIO, moto) without code changes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem(endpoint_url: str | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem; ``endpoint_url`` (or ``$AWS_ENDPOINT_URL``) selects MinIO/moto-style servers."""
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    kwargs: dict[str, object] = {
        "region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    }
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it (bucket/key for S3, absolute path locally)."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(endpoint_url), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a folder or S3 prefix. A part that would leave it (``..``, an absolute path) is a
    ValueError: parts come from input file names and S3 keys, and an output must never land outside its folder."""
    for part in parts:
        if os.path.isabs(part) or ".." in PurePosixPath(part.replace("\\", "/")).parts:
            raise ValueError(f"unsafe path {part!r}: it would leave {uri}")
    uri = str(uri)
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri, *parts))


def read_bytes(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(uri, endpoint_url)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str | os.PathLike[str], data: bytes, endpoint_url: str | None = None) -> None:
    """Write a whole file; local writes go through a temp file so readers never see half a file."""
    fs, path = filesystem(uri, endpoint_url)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(target)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


#: The temp files of :func:`write_bytes`: ``.<name>.tmp<pid>``.
_TEMP_FILE = re.compile(r"^\..+\.tmp\d+$")


def remove_stray_temps(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> list[str]:
    """Delete the temp files that :func:`write_bytes` left below a local ``uri`` when its process was killed
    mid-write (a lost Ray actor; its work is redone and renamed into place by another). Call it only once no
    writer is left. Returns their paths; object stores write whole objects and have none."""
    fs, path = filesystem(uri, endpoint_url)
    if not isinstance(fs, pafs.LocalFileSystem) or not Path(path).is_dir():
        return []
    stray = [p for p in Path(path).rglob(".*.tmp*") if _TEMP_FILE.match(p.name) and p.is_file()]
    for p in stray:
        p.unlink(missing_ok=True)
    if stray:
        log.warning("removed %d temp file(s) of writes cut short by a lost actor (redone)", len(stray))
    return [str(p) for p in stray]


def exists(uri: str | os.PathLike[str], endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint_url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(
    uri: str | os.PathLike[str], extensions: Iterable[str] | None = None, endpoint_url: str | None = None
) -> list[str]:
    """All files below ``uri`` (recursive, sorted) as URIs of the same kind, filtered by extension."""
    fs, root = filesystem(uri, endpoint_url)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    exts = {e.lower() for e in extensions} if extensions is not None else None
    out = []
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if item.type != pafs.FileType.File or item.base_name.startswith("."):
            continue
        if exts is not None and Path(item.base_name).suffix.lower() not in exts:
            continue
        out.append(f"s3://{item.path}" if is_s3(uri) else item.path)
    return sorted(out)
