"""The text segmenter: network shapes, the shipped weights on held-out renders, training, and its place in
the cleaner."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from weldray.text_removal import Detection, MissingWeightsError, TextCleaner
from weldray.text_removal.detectors import SEGMENTED
from weldray.text_removal.inpainters import OpenCVInpainter
from weldray.text_removal.segmenter import STRIDE, TextSegmenter, build_textseg, load_textseg, to_tensor
from weldray.text_removal.segmenter_train import SEGMENTER_SEED, SegmenterTrainConfig, cell_targets, train_segmenter

# Held-out renders: never a training (SEGMENTER_SEED) or validation (SEGMENTER_SEED + 1) seed.
HELD_OUT_SEED = 7


class NoText:
    """An OCR detector that finds nothing: what the segmenter adds is all there is."""

    name = "none-found"
    recognizes = True

    def detect(self, image: np.ndarray) -> list:
        return []


def _renders(kind: str | None, n: int, size: int = 640):
    """``n`` held-out procedural welds whose only text kind is ``kind`` (None: text-free)."""
    from weldray.data.procedural import render_weld

    out = []
    for i in range(400):
        s = render_weld(np.random.default_rng([HELD_OUT_SEED, i]), label="good_weld", size=size, with_text=bool(kind))
        if kind is None or s.text_kinds == [kind]:
            out.append(s)
        if len(out) == n:
            return out
    raise AssertionError(f"fewer than {n} held-out renders with text kinds [{kind}]")


@pytest.fixture(scope="module")
def segmenter(tr_cfg):
    return TextSegmenter(tr_cfg)


def test_cell_targets_mark_every_cell_holding_a_glyph_pixel():
    mask = np.zeros((8, 12), bool)
    mask[0, 0] = mask[5, 11] = True
    t = cell_targets(mask)
    assert t.shape == (2, 3) and t.dtype == np.float32
    assert t.tolist() == [[1, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("shape", [(320, 320), (480, 640), (100, 60)])
def test_network_predicts_one_logit_per_4x4_cell(shape):
    import torch

    net = build_textseg(8).eval()
    h, w = (s // STRIDE * STRIDE for s in shape)
    with torch.inference_mode():
        y = net(to_tensor(np.zeros((1, h, w, 3), np.uint8)))
    assert tuple(y.shape) == (1, 1, h // STRIDE, w // STRIDE)


def test_missing_weights_name_the_file_and_the_training_command(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"nope\.pt.*weldray train-segmenter.*segmenter=none"):
        load_textseg(tmp_path / "nope.pt")


def test_shipped_weights_carry_their_provenance():
    _, meta = load_textseg(None)
    assert meta["seed"] == SEGMENTER_SEED and meta["generator"].startswith("weldray-procedural/")
    assert meta["val_cell_recall"] > 0.8 and meta["val_cell_precision"] > 0.8


@pytest.mark.parametrize("kind", ["watermark", "printed", "handwritten"])
def test_shipped_weights_find_held_out_text(segmenter, kind):
    """Regions kept on unseen renders cover most glyph pixels of each text kind, faint watermarks included."""
    import cv2

    covered = total = 0
    for s in _renders(kind, 3):
        found = np.zeros(s.image.shape[:2], np.uint8)
        for d in segmenter.detect(s.image):
            if d.kept:
                cv2.fillPoly(found, [np.round(d.box).astype(np.int32).reshape(-1, 1, 2)], 1)
        found = cv2.dilate(found, np.ones((9, 9), np.uint8)) > 0  # the cleaner dilates by 25 px at 640 px
        covered, total = covered + int((found & s.text_mask).sum()), total + int(s.text_mask.sum())
    assert covered / total >= 0.9


def test_shipped_weights_keep_nothing_on_text_free_welds(segmenter):
    kept = [d for s in _renders(None, 6) for d in segmenter.detect(s.image) if d.kept]
    assert kept == [], [(d.det_score, d.box.tolist()) for d in kept]


class OneBox:
    """An OCR detector that finds one box: the bounding box of the largest glyph blob of a render."""

    name = "one-box"
    recognizes = True

    def __init__(self, glyphs: np.ndarray) -> None:
        import cv2

        n, _, stats, _ = cv2.connectedComponentsWithStats(glyphs.astype(np.uint8))
        x, y, w, h = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), :4]
        self.box = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)

    def detect(self, image: np.ndarray) -> list[Detection]:
        return [Detection(box=self.box.copy(), det_score=0.9, text="WELD", text_score=0.95)]


def _clean(tr_cfg, detector, image, **cfg):
    return TextCleaner(dataclasses.replace(tr_cfg, **cfg), detector=detector, inpainter=OpenCVInpainter()).clean(image)


def test_segmented_regions_complete_text_ocr_found(tr_cfg):
    """A faint watermark OCR found one piece of: the segmenter's regions near it are inpainted and recorded."""
    s = _renders("watermark", 1)[0]
    alone = _clean(tr_cfg, OneBox(s.text_mask), s.image, segmenter="none")
    res = _clean(tr_cfg, OneBox(s.text_mask), s.image, segmenter_reach_px=None)
    recall = (res.mask > 0)[s.text_mask].mean()
    assert recall >= 0.9 and recall > (alone.mask > 0)[s.text_mask].mean() + 0.05
    seg = [d for d in res.kept if d.source == SEGMENTED]
    assert seg and all(d.text == "" and d.text_score is None for d in seg)
    assert seg[0].to_dict()["source"] == SEGMENTED


def test_segmented_regions_alone_do_not_open_an_image(tr_cfg):
    """Without OCR-found text the regions are recorded with their reason and nothing is inpainted."""
    s = _renders("watermark", 1)[0]
    res = _clean(tr_cfg, NoText(), s.image)
    assert res.detections and not res.mask.any() and res.encoded is None
    assert all(not d.kept and "from OCR-found text" in d.reason for d in res.detections)
    assert _clean(tr_cfg, NoText(), s.image, segmenter_reach_px=None).mask.any()


@pytest.mark.parametrize(("gap", "kept"), [(40, True), (90, True), (160, False)])
def test_reach_is_measured_from_the_nearest_ocr_box(tr_cfg, gap, kept):
    from weldray.text_removal.cleaner import _keep_near_text

    text = Detection(box=np.array([[100, 100], [200, 100], [200, 130], [100, 130]], np.float32), det_score=0.9)
    x = 200 + gap
    box = np.array([[x, 100], [x + 30, 100], [x + 30, 130]], np.float32)
    region = Detection(box=box, det_score=0.9, source=SEGMENTED)
    _keep_near_text([region], [text], (640, 640, 3), dataclasses.replace(tr_cfg, segmenter_reach_px=100))
    assert region.kept is kept


def test_training_lowers_the_loss_and_writes_loadable_weights(tmp_path):
    cfg = SegmenterTrainConfig(renders=12, steps=40, batch_size=4, crop=128, width=8, val_renders=4, workers=1)
    meta = train_segmenter(tmp_path / "ts.pt", cfg)
    assert meta["final_loss"] < meta["initial_loss"]
    net, loaded = load_textseg(tmp_path / "ts.pt")
    assert loaded["width"] == 8 and loaded["config"]["steps"] == 40
    assert 0.0 <= loaded["val_cell_recall"] <= 1.0


@pytest.mark.parametrize(
    ("key", "value"), [("crop", 100), ("steps", 0), ("text_fraction", 1.5)]
)
def test_training_config_validates_itself(key, value):
    with pytest.raises(ValueError, match=key):
        SegmenterTrainConfig(**{key: value})


def test_overlay_text_composites_onto_any_square_image():
    from weldray.data.procedural import overlay_text

    rng = np.random.default_rng(3)
    bg = np.full((256, 256, 3), 128, np.uint8)
    img, glyphs, kinds, texts = overlay_text(rng, bg)
    assert kinds and texts and glyphs.any()
    assert not glyphs[(img == bg).all(axis=-1)].any()  # glyph pixels all changed
    with pytest.raises(ValueError, match="square"):
        overlay_text(rng, np.zeros((100, 120, 3), np.uint8))
