"""Image decoding and the one resize policy shared by training, evaluation, export and serving.

Contract: models take ``float32`` NCHW tensors of raw RGB values in ``[0, 255]`` at
``image_size x image_size``; normalisation lives inside the model (and so inside the ONNX
graph), so every consumer prepares input with :func:`prepare` and nothing else.

Decoding is defensive because it runs on user uploads: the format is checked from magic
bytes before decoding, pixel counts are checked from the header before pixels are
allocated, and every failure is an :class:`ImageError` with an HTTP-style status.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Formats accepted everywhere (PIL format names). MPO is multi-picture JPEG from phones.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP"})
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


class ImageError(ValueError):
    """An image that cannot be used; ``status`` is the HTTP status a server should answer."""

    status: int = 400
    code: str = "invalid_image"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EmptyImageError(ImageError):
    code = "empty"


class CorruptImageError(ImageError):
    code = "corrupt"


class UnsupportedFormatError(ImageError):
    status = 415
    code = "unsupported_format"


class ImageTooLargeError(ImageError):
    status = 413
    code = "too_large"


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes (None when unknown), without decoding anything."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16/32-bit greyscale is rescaled, alpha is composited on white."""
    img = ImageOps.exif_transpose(img) if hasattr(img, "getexif") else img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return img


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: frozenset[str] = ALLOWED_FORMATS,
) -> Image.Image:
    """Validate and decode encoded image bytes into an 8-bit RGB image."""
    data = bytes(data)
    if not data:
        raise EmptyImageError("empty body: no image bytes were sent")
    fmt = sniff_format(data)
    if fmt is None or fmt not in allowed_formats:
        kind = f"'{fmt}'" if fmt else "not a recognised image"
        raise UnsupportedFormatError(
            f"unsupported image format ({kind}); allowed: {', '.join(sorted(allowed_formats))}"
        )
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Image.DecompressionBombError as exc:  # PIL's own guard (2x Image.MAX_IMAGE_PIXELS), from the header too
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{declared.group(1)} pixels" if declared else "more pixels than PIL allows"
        raise ImageTooLargeError(
            f"{fmt} header declares {size}; the limit is {max_pixels} (refused before decoding)"
        ) from None
    except Exception as exc:  # PIL raises many types for garbage headers
        raise CorruptImageError(f"corrupt {fmt} data: {_reason(exc)}") from None
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image has {width}x{height} = {width * height} pixels; the limit is {max_pixels} (refused before decoding)"
        )
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    try:
        img.load()
        return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except Exception as exc:
        raise CorruptImageError(f"truncated or corrupt {fmt} data: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """PIL's message without the repr of our in-memory buffer (``<_io.BytesIO object at 0x...>``): clients read it."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)) or type(exc).__name__


def array_to_image(arr: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays (uint8, uint16 or float in [0, 1]) to RGB."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(f"unsupported array dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr), mode))


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An 8-bit RGB PIL image from a path, encoded bytes, a PIL image or a numpy array."""
    if isinstance(src, Image.Image):
        if src.width * src.height > max_pixels:
            raise ImageTooLargeError(f"image has {src.width * src.height} pixels; the limit is {max_pixels}")
        return to_rgb(src)
    if isinstance(src, np.ndarray):
        return array_to_image(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return decode_image(src, max_pixels=max_pixels)
    if isinstance(src, (str, os.PathLike)):
        from weldray.io import read_bytes

        return decode_image(read_bytes(src) if str(src).startswith("s3://") else Path(src).read_bytes(),
                            max_pixels=max_pixels)
    raise TypeError(f"cannot load an image from {type(src).__name__}")


def resize_for_model(img: Image.Image, size: int) -> np.ndarray:
    """The resize policy: the whole image squashed to ``size x size`` (no crop, so defects at the
    edges survive), bilinear with antialiasing. Returns uint8 HxWx3."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def prepare(src: ImageSource, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Model input for one image: float32 CHW raw RGB in [0, 255]."""
    arr = resize_for_model(load_image(src, max_pixels=max_pixels), size)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
