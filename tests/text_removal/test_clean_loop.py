"""The detect -> inpaint -> encode -> re-detect loop, with a scripted detector (no OCR model needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from weldray.text_removal import Detection, TextCleaner
from weldray.text_removal.cleaner import ALREADY_JUDGED, CONTINUES_LINE
from weldray.text_removal.inpainters import OpenCVInpainter
from weldray.text_removal.pipeline import FileCodec

TEXT_BOX = [[20, 20], [100, 20], [100, 40], [20, 40]]
HOLE_BOX = [[140, 140], [180, 140], [180, 180], [140, 180]]


def _d(box, text="W-1234", score=0.99):
    return Detection(box=np.array(box, np.float32), det_score=0.9, text=text, text_score=score)


class ScriptedDetector:
    """Returns the scripted candidates call by call and remembers the images it was shown."""

    name = "scripted"
    recognizes = True

    def __init__(self, script: list[list[Detection]]) -> None:
        self.script, self.seen = script, []

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.seen.append(image.copy())
        step = self.script[len(self.seen) - 1] if len(self.seen) <= len(self.script) else []
        return [dataclasses.replace(d) for d in step]


@pytest.fixture()
def image():
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (200, 200, 3), dtype=np.uint8)


def _cleaner(tr_cfg, script, **cfg):
    cfg.setdefault("segmenter", "none")  # the loop's rules, not the segmenter's view of random pixels
    det = ScriptedDetector(script)
    return TextCleaner(dataclasses.replace(tr_cfg, **cfg), detector=det, inpainter=OpenCVInpainter()), det


def test_no_text_means_one_search_and_the_input_is_the_output(tr_cfg, image):
    cleaner, det = _cleaner(tr_cfg, [[_d(HOLE_BOX, "0", 0.6)]])
    res = cleaner.clean(image, FileCodec("x.jpg", 95))
    assert len(det.seen) == 1 and res.encoded is None and res.residual == []
    assert np.array_equal(res.image, image) and not res.mask.any() and res.kept == []


def test_leftovers_are_removed_on_the_encoded_image_until_clean(tr_cfg, image):
    leftover = [[90, 22], [104, 22], [104, 38], [90, 38]]  # the end of the caption, inside the first mask
    cleaner, det = _cleaner(tr_cfg, [[_d(TEXT_BOX)], [_d(leftover, "34")], []])
    res = cleaner.clean(image, FileCodec("x.jpg", 95))
    assert len(det.seen) == 3 and res.residual == []
    assert [d.pass_index for d in res.kept] == [0, 1]
    # Searches after a round see the JPEG the job writes, not the in-memory array.
    from weldray.preprocessing import decode_image

    assert np.array_equal(det.seen[-1], np.asarray(decode_image(res.encoded)))
    assert np.array_equal(res.image, det.seen[-1])


@pytest.mark.parametrize("first_read", [[_d(HOLE_BOX, "0", 0.64)], []])
def test_later_passes_do_not_rejudge_untouched_pixels(tr_cfg, image, first_read):
    """A hole read "0" at 0.64 (or not at all) on the original reads "0" at 0.95 after re-encoding:
    not inpainted, recorded with the reason."""
    cleaner, det = _cleaner(tr_cfg, [[_d(TEXT_BOX), *first_read], [_d(HOLE_BOX, "0", 0.95)]])
    res = cleaner.clean(image, FileCodec("x.png", 95))
    assert res.residual == [] and len(det.seen) == 2
    flipped = [d for d in res.detections if d.pass_index == 1]
    assert not flipped[0].kept and flipped[0].reason.startswith(ALREADY_JUDGED)
    assert not res.mask[160, 160]


def test_text_left_after_the_last_round_is_residual(tr_cfg, image):
    under = [[30, 22], [90, 22], [90, 38], [30, 38]]  # a stamp that shows once the caption is gone
    script = [[_d(TEXT_BOX)], [_d(under, "STAMP")], [_d(under, "STAMP")]]
    cleaner, det = _cleaner(tr_cfg, script, passes=2)
    res = cleaner.clean(image)
    assert len(det.seen) == 3 and [d.text for d in res.residual] == ["STAMP"]
    assert len(res.kept) == 2  # inpainted boxes; the residual is not counted as removed
    cleaner, det = _cleaner(tr_cfg, script, passes=2, audit=False)
    res = cleaner.clean(image)
    assert len(det.seen) == 2 and res.residual is None


def test_later_passes_still_add_words_the_first_search_missed(tr_cfg, image):
    cleaner, det = _cleaner(tr_cfg, [[_d(TEXT_BOX)], [_d(HOLE_BOX, "SAMPLE", 0.97)], []])
    res = cleaner.clean(image, FileCodec("x.png", 95))
    assert res.residual == [] and [d.text for d in res.kept] == ["W-1234", "SAMPLE"] and res.mask[160, 160]


NEXT_ON_LINE = [[110, 20], [126, 20], [126, 40], [110, 40]]  # one letter right after "W-1234", same height


@pytest.mark.parametrize(
    ("box", "score", "kept"),
    [
        (NEXT_ON_LINE, 0.84, True),  # the end of a line (a watermark tile cut by the border): text
        (HOLE_BOX, 0.84, False),  # the same read alone: a blob read as a letter
        (NEXT_ON_LINE, 0.6, False),  # on the line but below min_text_score: not text at all
    ],
)
def test_short_read_is_kept_only_when_it_continues_a_kept_line(tr_cfg, image, box, score, kept):
    cleaner, _ = _cleaner(tr_cfg, [[_d(TEXT_BOX), _d(box, "E", score)], []])
    res = cleaner.clean(image)
    (letter,) = [d for d in res.detections if d.text == "E"]
    assert letter.kept is kept and (letter.reason == CONTINUES_LINE) is kept
    cx, cy = np.asarray(box).mean(0).astype(int)
    assert bool(res.mask[cy, cx]) is kept
