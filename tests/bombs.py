"""Decompression bombs: small files in every accepted format whose headers declare a huge image.

Each is a few hundred bytes to a few tens of kB; decoded, it would take gigabytes. The PNG one is a real bomb
(its compressed stream holds every row); the others declare dimensions their data does not fill, which is all a
decoder that trusts the header needs to allocate the whole image.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

BOMB_FORMATS = ("PNG", "TIFF", "WEBP", "JPEG")


def _tiny(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("L" if fmt != "WEBP" else "RGB", (8, 8), 128).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG whose zlib stream holds all ``height`` rows of zeros (~1000:1)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    block = row * max(1, 4_000_000 // len(row))
    rows_per_block = len(block) // len(row)
    idat, done = [], 0
    while done < height:
        n = min(rows_per_block, height - done)
        idat.append(compressor.compress(block[: n * len(row)]))
        done += n
    idat.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(idat)) + _png_chunk(
        b"IEND", b""
    )


def tiff_bomb(width: int, height: int) -> bytes:
    """An 8x8 deflate TIFF whose ImageWidth / ImageLength tags are rewritten (as LONG) to the given size."""
    data = bytearray(_tiny("TIFF", compression="tiff_adobe_deflate"))
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):  # ImageWidth, ImageLength
            struct.pack_into("<HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
        elif tag == 278:  # RowsPerStrip: one strip of the whole declared height
            struct.pack_into("<HHII", data, entry, tag, 4, 1, height)
    return bytes(data)


def jpeg_bomb(width: int, height: int) -> bytes:
    """An 8x8 baseline JPEG whose SOF0 frame header declares ``width`` x ``height`` (at most 65535 each)."""
    data = bytearray(_tiny("JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_bomb(width: int, height: int) -> bytes:
    """An 8x8 lossless WebP whose VP8L header declares ``width`` x ``height`` (at most 16384 each)."""
    data = bytearray(_tiny("WEBP", lossless=True))
    vp8l = data.index(b"VP8L") + 8
    assert data[vp8l] == 0x2F
    bits = struct.unpack_from("<I", data, vp8l + 1)[0]
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, vp8l + 1, bits)
    return bytes(data)


def bomb(fmt: str, width: int, height: int) -> bytes:
    return {"PNG": png_bomb, "TIFF": tiff_bomb, "WEBP": webp_bomb, "JPEG": jpeg_bomb}[fmt](width, height)
