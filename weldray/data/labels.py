"""YOLO box labels at ingest: ``labels/<class folder>/<stem>.txt`` beside the class folders, or the YOLO export
layout (``data.yaml`` + ``images/`` + ``labels/``) whose image-level label follows ``data.yolo_label_rule``.

A label file holds one box a line, ``class x_center y_center width height`` relative to the image (0..1). Box
class names come from a ``data.yaml`` (``names``: a list or an index -> name mapping) in the labels folder or the
dataset root; without one the class index is the name. A malformed line makes its image a reject with the file
and line in the reason: a box file that cannot be read fully is not a location hint anyone should trust.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from weldray import io


class LabelError(ValueError):
    """A label file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Box:
    cls: str
    x: float  # centre, relative
    y: float
    w: float
    h: float

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in pixels, clipped to the image."""
        x0 = max(0, round((self.x - self.w / 2) * width))
        y0 = max(0, round((self.y - self.h / 2) * height))
        x1 = min(width, round((self.x + self.w / 2) * width))
        y1 = min(height, round((self.y + self.h / 2) * height))
        return x0, y0, x1, y1


def read_class_names(candidates: list[str], endpoint_url: str | None = None) -> list[str] | None:
    """``names`` of the first existing ``data.yaml`` among ``candidates`` (None when there is none)."""
    for uri in candidates:
        if not io.exists(uri, endpoint_url):
            continue
        try:
            spec = yaml.safe_load(io.read_bytes(uri, endpoint_url)) or {}
        except yaml.YAMLError as exc:
            raise LabelError(f"{uri}: not valid YAML ({exc})") from None
        names = spec.get("names") if isinstance(spec, dict) else None
        if isinstance(names, dict):
            names = [str(names[k]) for k in sorted(names, key=int)]
        if not isinstance(names, list) or not names:
            raise LabelError(f"{uri}: needs 'names', a list of box class names")
        return [str(n) for n in names]
    return None


def parse_yolo(text: str, names: list[str] | None, source: str) -> list[Box]:
    """The boxes of one label file; :class:`LabelError` names ``source`` and the line of the first bad line."""
    boxes = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source} line {n}"
        if len(parts) != 5:
            raise LabelError(f"{where}: expected 'class x_center y_center width height', got {len(parts)} fields")
        try:
            index = int(parts[0])
            x, y, w, h = (float(p) for p in parts[1:])
        except ValueError:
            raise LabelError(f"{where}: not numbers: {line!r}") from None
        if index < 0 or (names is not None and index >= len(names)):
            raise LabelError(f"{where}: class {index} is not in data.yaml names ({len(names or [])} classes)")
        if not all(0.0 <= v <= 1.0 for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise LabelError(f"{where}: coordinates must be relative (0..1) with width, height > 0: {line!r}")
        boxes.append(Box(names[index] if names is not None else str(index), x, y, w, h))
    return boxes


def image_label(boxes: list[Box], rule: dict[str, list[str]], default: str) -> str:
    """The first label of ``rule`` that one of ``boxes`` belongs to, else ``default``."""
    for label, classes in rule.items():
        if any(b.cls in classes for b in boxes):
            return label
    return default


def export_label_path(relpath: str) -> str | None:
    """YOLO export layout: the label file of an image is its path with the last ``images`` folder as
    ``labels`` and a ``.txt`` suffix (``images/train/a.jpg`` and ``train/images/a.jpg`` both work)."""
    parts = list(PurePosixPath(relpath).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return str(PurePosixPath(*parts).with_suffix(".txt"))
    return None


def boxes_to_json(boxes: list[Box] | None) -> str | None:
    return None if boxes is None else json.dumps([asdict(b) for b in boxes])


def boxes_column(rows: Any) -> Any:
    """The ``boxes`` column of manifest rows (a DataFrame) with None, not NaN, where a row has no boxes (rows
    mixed in without the column, such as synthetic ones)."""
    return rows["boxes"].astype(object).where(rows["boxes"].notna(), None)


def boxes_from_json(value: str | None) -> list[Box] | None:
    """The manifest's ``boxes`` column (None: the image has no label file)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return [Box(**b) for b in json.loads(value)]
