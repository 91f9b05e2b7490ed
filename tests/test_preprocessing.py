"""Upload decoding under attack: decompression bombs in every accepted format, and a bounded fuzz of the
validation/decoding path (random bytes, mutated valid images). Only ImageError (a 4xx) may come out."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.bombs import BOMB_FORMATS, bomb
from weldray.preprocessing import ALLOWED_FORMATS, ImageError, ImageTooLargeError, decode_image

#: Fuzz examples per strategy: seconds in the default suite, minutes under `slow` (WELDRAY_FUZZ_EXAMPLES overrides).
FUZZ_FAST, FUZZ_SLOW = 150, 3000


@pytest.fixture()
def pixels_decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Sizes of every image whose pixels PIL decoded (ImageFile.load) while the test ran."""
    calls: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


@pytest.mark.parametrize("fmt", BOMB_FORMATS)
@pytest.mark.parametrize("side", [8000, 16000], ids=["over_our_limit", "over_pils_limit"])
def test_decompression_bombs_are_refused_before_decoding(
    fmt: str, side: int, pixels_decoded: list[tuple[int, int]]
) -> None:
    """A small file declaring side x side pixels (64 M: over serve.max_image_pixels' 40 M default; 256 M: over
    PIL's own bomb guard too) is a 413 from its header alone: no pixel is decoded and it takes milliseconds."""
    data = bomb(fmt, side, side)
    assert len(data) < 64_000  # small on the wire; decoded it would be side * side * 3 bytes
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"the limit is 40000000 \(refused before decoding\)") as err:
        decode_image(data)
    took = time.perf_counter() - started
    assert err.value.status == 413 and str(side * side) in err.value.reason
    assert pixels_decoded == [] and took < 0.5, (pixels_decoded, took)
    # The same header within the limit gets to the decoder (whose data may then not fill it: a 400): the spy sees
    # decoding when it happens, so the empty list above means none happened.
    try:
        assert decode_image(bomb(fmt, 64, 48)).size == (64, 48)
    except ImageError as exc:
        assert exc.status == 400
    assert set(pixels_decoded) == {(64, 48)}


def _valid_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
    out = []
    for fmt, kw in (("JPEG", {}), ("PNG", {}), ("BMP", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {}),
                    ("WEBP", {"lossless": True}), ("PNG", {"optimize": True})):
        buf = io.BytesIO()
        (photo.convert("L") if fmt == "BMP" else photo).save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


def _check_decode(data: bytes, max_pixels: int = 1_000_000) -> str:
    """'ok' or the ImageError's code; any other exception fails the test."""
    try:
        img = decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        assert 400 <= exc.status < 500 and exc.reason and "BytesIO" not in exc.reason, exc.reason
        return exc.code
    assert img.mode == "RGB" and 0 < img.width * img.height <= max_pixels
    return "ok"


@pytest.mark.parametrize(
    "budget", [FUZZ_FAST, pytest.param(FUZZ_SLOW, marks=pytest.mark.slow)], ids=["fast", "slow"]
)
def test_fuzzed_uploads_only_ever_get_4xx(budget: int) -> None:
    """Random bytes, random bytes behind each format's magic number, and valid images with bytes flipped, cut,
    inserted or a header field overwritten: every case decodes or is an ImageError (4xx), nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    budget = int(os.environ.get("WELDRAY_FUZZ_EXAMPLES", budget))
    valid = _valid_images()
    magics = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP"]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(1, 8))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
            at = draw(st.integers(0, len(data) - 1)) if data else 0
            if kind == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 256))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            else:  # a header field: sizes, counts, offsets
                data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff"]))
        return bytes(data)

    uploads = st.one_of(
        st.binary(max_size=2048),
        st.builds(lambda m, tail: m + tail, st.sampled_from(magics), st.binary(max_size=2048)),
        mutated(),
    )
    seen: dict[str, int] = {}

    @settings(max_examples=3 * budget, deadline=None, derandomize=budget == FUZZ_FAST, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(uploads)
    def one(data: bytes) -> None:
        code = _check_decode(data)
        seen[code] = seen.get(code, 0) + 1

    one()
    print(f"fuzzed decode_image: {sum(seen.values())} cases, outcomes {seen}")
    assert sum(seen.values()) >= budget
    assert {"ok", "corrupt", "unsupported_format"} <= set(seen), seen  # the fuzz reached the decoders


def test_every_accepted_format_has_a_bomb() -> None:
    """Adding a format to ALLOWED_FORMATS needs a bomb here (BMP and MPO: BMP is uncompressed, so its size is
    its pixels and serve.max_body_bytes bounds it; MPO is JPEG's container and its header is JPEG's)."""
    assert set(ALLOWED_FORMATS) - {"BMP", "MPO"} == set(BOMB_FORMATS)
