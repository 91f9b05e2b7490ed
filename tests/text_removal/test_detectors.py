from __future__ import annotations

import dataclasses
import hashlib
import sys

import numpy as np
import pytest

from weldray.config import ConfigError, load_config
from weldray.config.text_removal import DETECTORS, INPAINTERS
from weldray.text_removal import (
    Detection,
    MissingWeightsError,
    TextCleaner,
    create_detector,
    filter_detections,
    list_detectors,
    list_inpainters,
)
from weldray.text_removal.detectors import EASYOCR_WEIGHTS, check_easyocr_weights


def test_registries_match_config_choices():
    assert list_detectors() == sorted(DETECTORS)
    assert list_inpainters() == sorted(INPAINTERS)


@pytest.mark.parametrize(
    "override, key",
    [
        ("text_removal.detector=tesseract", "text_removal.detector"),
        ("text_removal.min_text_score=1.5", "text_removal.min_text_score"),
        ("text_removal.opencv_method=fast", "text_removal.opencv_method"),
        ("text_removal.num_cpus_per_actor=0", "text_removal.num_cpus_per_actor"),
        ("text_removal.det_extra_side_lens=[480,16]", "text_removal.det_extra_side_lens"),
        ("text_removal.det_thresh=1.5", "text_removal.det_thresh"),
        ("text_removal.min_short_text_score=2", "text_removal.min_short_text_score"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert err.value.key == key


def _det(box, text="AB12", text_score=0.95, det_score=0.9):
    return Detection(box=np.array(box, np.float32), det_score=det_score, text=text, text_score=text_score)


def test_filter_rejects_ripple_like_boxes(tr_cfg):
    line = [[10, 10], [110, 10], [110, 30], [10, 30]]  # 100x20 text line
    dets = filter_detections(
        [
            _det(line),
            _det(line, text_score=0.5),  # low recognition confidence
            _det(line, text="--", text_score=0.99),  # no letters/digits
            _det([[0, 100], [320, 100], [320, 140], [0, 140]], text="CCC", text_score=0.9),  # stretched chars
            _det([[100, 0], [140, 0], [140, 300], [100, 300]], text="1", text_score=0.9),  # whole-bead height
            _det(line, det_score=0.2),
            _det([[10, 10], [40, 10], [40, 40], [10, 40]], text="0", text_score=0.85),  # a hole read as "0"
            _det([[10, 10], [40, 10], [40, 40], [10, 40]], text="Q", text_score=0.99),  # a sure letter
        ],
        (320, 320, 3),
        tr_cfg,
    )
    assert [d.kept for d in dets] == [True, False, False, False, False, False, False, True]
    assert "short text '0'" in dets[6].reason
    assert all(d.reason for d in dets[1:7])


def test_rapidocr_finds_printed_text_and_spares_text_free_welds(printed_sample, text_free_samples, tr_cfg):
    cleaner = TextCleaner(tr_cfg)
    kept = [d for d in cleaner.find_text(printed_sample.image) if d.kept]
    assert kept, f"no text found in a render with {printed_sample.texts}"
    found = " ".join(d.text for d in kept).replace(" ", "")
    assert any(t.replace(" ", "")[:4] in found for t in printed_sample.texts), (found, printed_sample.texts)
    res = cleaner.clean(printed_sample.image)
    tm = printed_sample.text_mask.astype(bool)
    assert (res.mask[tm] > 0).mean() >= 0.98  # printed glyphs + outlines; full figures in docs/measurements.md
    for s in text_free_samples:
        assert not [d for d in cleaner.find_text(s.image) if d.kept], "weld texture taken for text"


def _line(x0, y0, length, height, angle_deg=0.0):
    """4-point box of a text line starting at (x0, y0), rotated by angle_deg."""
    u = np.array([np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))])
    n = np.array([-u[1], u[0]])
    p = np.array([x0, y0], float)
    return [p, p + length * u, p + length * u + height * n, p + height * n]


def test_bridge_joins_a_line_split_by_the_bead_only():
    """A watermark crossing the bead comes back as two collinear pieces: the gap between them is masked;
    boxes on parallel lines, at other angles or too far apart are left alone."""
    from weldray.text_removal.cleaner import bridge_lines, text_mask

    u, n = np.array([np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))]), np.array([-0.5, np.cos(np.deg2rad(30))])
    left, right = _det(_line(20, 100, 80, 20, 30)), _det(_line(20, 100, 80, 20, 30))
    right.box = right.box + np.float32(130 * u)  # 50 px gap = 2.5 line heights
    assert len(bridge_lines([left, right], 3.0)) == 1
    x, y = np.round(np.array([20, 100]) + 105 * u + 10 * n).astype(int)  # middle of the gap
    assert text_mask([left, right], (320, 320, 3), 0, bridge_gap=3.0)[y, x] == 255
    assert text_mask([left, right], (320, 320, 3), 0, bridge_gap=0.0)[y, x] == 0
    below = _det(_line(20, 160, 80, 20, 0))  # parallel line 60 px lower
    beside = _det(_line(150, 100, 80, 20, 0))  # same line, 50 px gap
    crossing = _det(_line(120, 40, 80, 20, 90))
    far = _det(_line(20, 100, 80, 20, 0))
    far.box = far.box + np.float32([200, 0])  # 120 px gap = 6 line heights
    first = _det(_line(20, 100, 80, 20, 0))
    assert len(bridge_lines([first, beside], 3.0)) == 1
    # A two-letter piece (length 1.4 x height) leads a bridge to a single letter on its line ("D" .. "FT").
    d_letter, ft = _det(_line(20, 100, 24, 24, 0)), _det(_line(100, 100, 34, 24, 0))
    assert len(bridge_lines([d_letter, ft], 3.0)) == 1
    assert bridge_lines([first, below], 3.0) == []
    assert bridge_lines([first, crossing], 3.0) == []
    assert bridge_lines([first, far], 3.0) == []


def test_overlapping_boxes_are_filled_not_xored():
    from weldray.text_removal.cleaner import text_mask

    a, b = _det(_line(10, 10, 100, 30)), _det(_line(60, 20, 100, 30))
    mask = text_mask([a, b], (200, 200, 3), 0)
    assert mask[30, 80] == 255  # inside both boxes


def test_rapidocr_never_downloads(monkeypatch, tr_cfg):
    """The shipped ONNX files are passed explicitly, so rapidocr's downloader is never reached."""
    import rapidocr.utils.download_file as dl

    def boom(*a, **k):
        raise AssertionError("rapidocr tried to download a model")

    monkeypatch.setattr(dl.DownloadFile, "run", classmethod(boom))
    det = create_detector(tr_cfg)
    assert det.detect(np.full((64, 64, 3), 128, np.uint8)) == []


def test_easyocr_missing_weights_names_file_md5_and_folder(tmp_path, tr_cfg):
    cfg = dataclasses.replace(tr_cfg, detector="easyocr", easyocr_model_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        create_detector(cfg)
    msg = str(err.value)
    assert "craft_mlt_25k.pth" in msg and "2f8227d2def4037cdb3b34389dcf9ec1" in msg and str(tmp_path) in msg


def test_easyocr_recognizer_weights_and_corrupt_file(tmp_path, monkeypatch, tr_cfg):
    import weldray.text_removal.detectors as detectors

    (tmp_path / "craft_mlt_25k.pth").write_bytes(b"not the real weights")
    cfg = dataclasses.replace(tr_cfg, detector="easyocr", easyocr_model_dir=str(tmp_path), recognize=True)
    with pytest.raises(MissingWeightsError, match="expected 2f8227d2def4037cdb3b34389dcf9ec1"):
        check_easyocr_weights(cfg)
    # Pretend the detector file is genuine: the recognizer file is what is missing then.
    monkeypatch.setitem(
        detectors.EASYOCR_WEIGHTS,
        "detector",
        ("craft_mlt_25k.pth", hashlib.md5(b"not the real weights").hexdigest()),
    )
    with pytest.raises(MissingWeightsError) as err:
        check_easyocr_weights(cfg)
    assert "english_g2.pth" in str(err.value) and EASYOCR_WEIGHTS["en"][1] in str(err.value)


def test_easyocr_not_installed_says_how_to_install(tmp_path, monkeypatch, tr_cfg):
    import weldray.text_removal.detectors as detectors

    monkeypatch.setattr(detectors, "check_easyocr_weights", lambda cfg: tmp_path)
    monkeypatch.setitem(sys.modules, "easyocr", None)  # import easyocr -> ImportError
    cfg = dataclasses.replace(tr_cfg, detector="easyocr")
    with pytest.raises(ImportError, match=r"pip install 'weldray\[easyocr\]'"):
        create_detector(cfg)


@pytest.mark.slow
def test_easyocr_detects_printed_text(printed_sample, tr_cfg):
    pytest.importorskip("easyocr", reason="easyocr not installed (pip install 'weldray[easyocr]')")
    cfg = dataclasses.replace(tr_cfg, detector="easyocr", recognize=False)
    try:
        det = create_detector(cfg)
    except MissingWeightsError as exc:
        pytest.skip(f"easyocr weights not available offline: {exc}")
    dets = filter_detections(det.detect(printed_sample.image), printed_sample.image.shape, cfg)
    assert any(d.kept for d in dets)


@pytest.mark.parametrize(
    "relpath",
    ["bad_welds/bad_0073.jpg", "bad_welds/bad_0075.jpg", "bad_welds/bad_0076.jpg", "good_welds/good_0059.jpg"],
)
def test_objects_read_as_one_letter_are_not_erased(real_welds_dir, default_cleaner, relpath):
    """Real photos without overlay text where a clamp ("D"), a hole ("0" at 0.85) and a torch nozzle ("n")
    were read as single letters: nothing may be inpainted, and the written file is the input itself."""
    from weldray.preprocessing import load_image
    from weldray.text_removal.pipeline import FileCodec

    res = default_cleaner.clean(np.asarray(load_image(real_welds_dir / relpath)), FileCodec(relpath, 95))
    assert not res.mask.any() and res.encoded is None and res.residual == [], [
        (d.text, d.text_score) for d in res.kept
    ]
