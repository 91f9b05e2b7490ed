"""Text detectors behind one small registry (``text_removal.detector``).

A detector returns every candidate box with its scores; :func:`filter_detections` then decides
which candidates are text. Keeping the two apart lets records show what was rejected and why,
which is how weld ripples read as "text lines" are found and tuned away.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from weldray.config import TextRemovalConfig

#: ``Detection.source`` of a region found by the text segmenter (no recognition: ``text_score`` None).
SEGMENTED = "textseg"


@dataclass
class Detection:
    """One candidate text region: a 4-point polygon in image pixels (x, y)."""

    box: np.ndarray
    det_score: float
    text: str = ""
    # Recognition confidence; None when the detector ran without recognition.
    text_score: float | None = None
    kept: bool = True
    reason: str = ""
    # Which cleaning pass found it (0 = on the original image).
    pass_index: int = 0
    # What found it: the OCR detector's name, or SEGMENTED for a region of the text segmenter.
    source: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "box": np.asarray(self.box, dtype=float).round(1).tolist(),
            "det_score": round(float(self.det_score), 4),
            "text": self.text,
            "text_score": None if self.text_score is None else round(float(self.text_score), 4),
            "kept": self.kept,
            "reason": self.reason,
            "pass": self.pass_index,
            "source": self.source,
        }


class TextDetector(Protocol):
    """Finds candidate text regions in an 8-bit RGB HxWx3 image."""

    name: str
    recognizes: bool

    def detect(self, image: np.ndarray) -> list[Detection]: ...


class MissingWeightsError(FileNotFoundError):
    """A model file is not on disk; the message says which file and how to provide it."""


_REGISTRY: dict[str, Callable[[TextRemovalConfig], TextDetector]] = {}


def register_detector(name: str) -> Callable[[Callable[[TextRemovalConfig], TextDetector]], Callable]:
    def deco(factory: Callable[[TextRemovalConfig], TextDetector]) -> Callable:
        _REGISTRY[name] = factory
        return factory

    return deco


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def create_detector(cfg: TextRemovalConfig) -> TextDetector:
    try:
        factory = _REGISTRY[cfg.detector]
    except KeyError:
        raise ValueError(f"unknown text detector {cfg.detector!r}; available: {list_detectors()}") from None
    return factory(cfg)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def filter_detections(
    dets: list[Detection], image_shape: tuple[int, ...], cfg: TextRemovalConfig
) -> list[Detection]:
    """Mark each candidate kept or rejected (with a reason) by score and geometry thresholds."""
    h, w = image_shape[:2]
    for d in dets:
        box = np.asarray(d.box, dtype=np.float32)
        rect_w, rect_h = _rotated_size(box)
        reason = ""
        if d.det_score < cfg.min_det_score:
            reason = f"det_score {d.det_score:.2f} < {cfg.min_det_score}"
        elif d.text_score is not None and d.text_score < cfg.min_text_score:
            reason = f"text_score {d.text_score:.2f} < {cfg.min_text_score}"
        elif d.text_score is not None and sum(ch.isalnum() for ch in d.text) < cfg.min_text_chars:
            reason = f"text {d.text!r} has < {cfg.min_text_chars} letters/digits"
        elif (
            d.text_score is not None
            and sum(ch.isalnum() for ch in d.text) <= cfg.short_text_chars
            and d.text_score < cfg.min_short_text_score
        ):
            # One blob reads as one letter: holes "0", pores "8", a torch nozzle "n".
            reason = f"short text {d.text!r} at text_score {d.text_score:.2f} < {cfg.min_short_text_score}"
        elif (
            d.text_score is not None
            and d.text
            and rect_w / (len(d.text) * max(rect_h, 1.0)) > cfg.max_char_aspect
        ):
            # Ripples along a bead read as a few letters stretched over a long box.
            reason = (
                f"{len(d.text)} chars over a {rect_w:.0f}x{rect_h:.0f}px box "
                f"(> {cfg.max_char_aspect} w/h per char)"
            )
        elif rect_h < cfg.min_box_height_px:
            reason = f"box height {rect_h:.0f}px < {cfg.min_box_height_px}px"
        elif rect_h > cfg.max_box_height_fraction * h:
            reason = f"box height {rect_h:.0f}px > {cfg.max_box_height_fraction} of image"
        elif rect_w * rect_h > cfg.max_box_area_fraction * h * w:
            reason = f"box area > {cfg.max_box_area_fraction} of image"
        d.kept = not reason
        d.reason = reason
    return dets


def _rotated_size(box: np.ndarray) -> tuple[float, float]:
    """(length, thickness) of a quadrilateral: text lines are long and thin in any orientation."""
    import cv2

    (_, _), (a, b), _ = cv2.minAreaRect(box.reshape(-1, 2).astype(np.float32))
    return (max(a, b), min(a, b))


# --------------------------------------------------------------------------- rapidocr


@dataclass
class RapidOCRDetector:
    """PP-OCR detection (+ recognition) through rapidocr 3.x, from the ONNX files shipped in its wheel.

    Model paths are passed explicitly so rapidocr never takes its download branch; a missing
    file fails here with its name instead of an attempt to reach the network.
    """

    cfg: TextRemovalConfig
    name: str = "rapidocr"
    recognizes: bool = field(init=False)

    DET_MODEL = "PP-OCRv6_det_small.onnx"
    REC_MODEL = "PP-OCRv6_rec_small.onnx"
    CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"

    def __post_init__(self) -> None:
        self.recognizes = self.cfg.recognize
        self._engine = _build_rapidocr(self.cfg, self.cfg.det_limit_side_len)
        # One engine per extra scale; only its detector is ever built (rapidocr loads models lazily).
        self._extra = [_build_rapidocr(self.cfg, side) for side in self.cfg.det_extra_side_lens]

    def detect(self, image: np.ndarray) -> list[Detection]:
        from rapidocr.utils.process_img import get_rotate_crop_image

        bgr = np.ascontiguousarray(image[..., ::-1])  # rapidocr takes OpenCV-style BGR arrays
        # Detection and recognition run as two public calls: rapidocr's combined call drops boxes
        # whose text reads empty and the detector's box scores, both of which the records keep.
        dets: list[Detection] = []
        # Extra scales only for images the detector has to upscale: measured on procedural welds, one scale
        # at a 640 px image's own size finds as much as two, while a 320 px image upscaled once loses 5 %.
        upscaled = min(image.shape[:2]) < self.cfg.det_limit_side_len
        for engine in (self._engine, *(self._extra if upscaled else ())):
            det = engine(bgr, use_det=True, use_cls=False, use_rec=False)
            if getattr(det, "boxes", None) is None or len(det.boxes) == 0:
                continue
            found = [
                Detection(box=np.asarray(b, np.float32), det_score=float(s))
                for b, s in zip(det.boxes, det.scores, strict=True)
            ]
            dets += new_boxes(found, dets, bgr.shape)
        if not dets:
            return []
        if self.recognizes:
            for d in dets:
                crop = get_rotate_crop_image(bgr, d.box.copy())
                rec = self._engine(crop, use_det=False, use_cls=False, use_rec=True)
                txts = getattr(rec, "txts", None) or ("",)
                scores = getattr(rec, "scores", None) or (0.0,)
                d.text, d.text_score = str(txts[0]), float(scores[0])
        return dets


def new_boxes(found: list[Detection], known: list[Detection], shape: tuple[int, ...]) -> list[Detection]:
    """Boxes of ``found`` not already (>= 70% of their area) covered by ``known`` boxes."""
    if not known:
        return found
    import cv2

    covered = np.zeros(shape[:2], np.uint8)
    for d in known:
        cv2.fillPoly(covered, [np.round(d.box).astype(np.int32).reshape(-1, 1, 2)], 1)
    new = []
    for d in found:
        own = np.zeros(shape[:2], np.uint8)
        cv2.fillPoly(own, [np.round(d.box).astype(np.int32).reshape(-1, 1, 2)], 1)
        area = int(own.sum())
        if area and (own & covered).sum() < 0.7 * area:
            new.append(d)
    return new


def rapidocr_model_dir() -> Path:
    import rapidocr

    return Path(rapidocr.__file__).resolve().parent / "models"


def _build_rapidocr(cfg: TextRemovalConfig, limit_side_len: int):  # -> rapidocr.RapidOCR
    import rapidocr
    from rapidocr import RapidOCR

    root = rapidocr_model_dir()
    paths = {
        k: root / f
        for k, f in (
            ("Det", RapidOCRDetector.DET_MODEL),
            ("Rec", RapidOCRDetector.REC_MODEL),
            ("Cls", RapidOCRDetector.CLS_MODEL),
        )
    }
    for key, path in paths.items():
        if key != "Cls" and not path.is_file():
            raise MissingWeightsError(
                f"rapidocr {key.lower()} model {path.name} not found at {path}: the rapidocr "
                f"{getattr(rapidocr, '__version__', '')} wheel ships it; reinstall with "
                "`pip install --force-reinstall 'rapidocr>=3.4'` (never rapidocr-onnxruntime, which pulls GUI opencv)"
            )
    device = resolve_device(cfg.device)
    params: dict[str, object] = {
        "Global.log_level": "error",
        "Global.use_cls": False,
        "Global.text_score": 0.0,  # weldray filters by score itself and records what it rejected
        "Global.model_root_dir": str(root),
        "Det.limit_side_len": limit_side_len,
        "Det.box_thresh": min(cfg.min_det_score, 0.5),
        "Det.thresh": cfg.det_thresh,
        "Det.unclip_ratio": cfg.det_unclip_ratio,
        "EngineConfig.onnxruntime.use_cuda": device == "cuda",
        **{f"{k}.model_path": str(p) for k, p in paths.items()},
    }
    if cfg.num_threads > 0:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = cfg.num_threads
        params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
    return RapidOCR(params=params)


@register_detector("rapidocr")
def _rapidocr(cfg: TextRemovalConfig) -> TextDetector:
    return RapidOCRDetector(cfg)


# --------------------------------------------------------------------------- easyocr

#: Files easyocr needs, with the MD5 sums its own model table lists.
EASYOCR_WEIGHTS = {
    "detector": ("craft_mlt_25k.pth", "2f8227d2def4037cdb3b34389dcf9ec1"),
    "en": ("english_g2.pth", "5864788e1821be9e454ec108d61b887d"),
}
EASYOCR_URLS = {
    "craft_mlt_25k.pth": "https://github.com/JaidedAI/EasyOCR/releases/download/pre-v1.1.6/craft_mlt_25k.zip",
    "english_g2.pth": "https://github.com/JaidedAI/EasyOCR/releases/download/v1.3/english_g2.zip",
}


def easyocr_model_dir(cfg: TextRemovalConfig) -> Path:
    """``text_removal.easyocr_model_dir``, else easyocr's own default (``$EASYOCR_MODULE_PATH/model``)."""
    if cfg.easyocr_model_dir:
        return Path(cfg.easyocr_model_dir).expanduser()
    base = os.environ.get("EASYOCR_MODULE_PATH") or os.environ.get("MODULE_PATH") or "~/.EasyOCR"
    return Path(base).expanduser() / "model"


def check_easyocr_weights(cfg: TextRemovalConfig) -> Path:
    """Fail early (before importing easyocr) when a weight file is missing or corrupt."""
    model_dir = easyocr_model_dir(cfg)
    needed = [EASYOCR_WEIGHTS["detector"]]
    if cfg.recognize:
        unsupported = [lang for lang in cfg.easyocr_langs if lang not in EASYOCR_WEIGHTS]
        if unsupported:
            raise ValueError(
                "text_removal.easyocr_langs: weldray knows the weights of "
                f"{sorted(set(EASYOCR_WEIGHTS) - {'detector'})}"
                f" only, got {unsupported}"
            )
        needed += [EASYOCR_WEIGHTS[lang] for lang in dict.fromkeys(cfg.easyocr_langs)]
    for fname, md5 in needed:
        path = model_dir / fname
        if not path.is_file():
            raise MissingWeightsError(
                f"easyocr weight file {fname} (md5 {md5}) not found in {model_dir}. Download it on a machine "
                f"with network access ({EASYOCR_URLS[fname]}, unzip), copy it to {path}, or set "
                "text_removal.easyocr_model_dir=<folder holding it>. weldray never downloads at run time."
            )
        actual = _md5(path)
        if actual != md5:
            raise MissingWeightsError(
                f"easyocr weight file {path} has md5 {actual}, expected {md5} ({fname}): the file is corrupt or a "
                f"different version; replace it with the one from {EASYOCR_URLS[fname]}"
            )
    return model_dir


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class EasyOCRDetector:
    """CRAFT detection (+ optional recognition) through easyocr, from local weights only."""

    cfg: TextRemovalConfig
    name: str = "easyocr"
    recognizes: bool = field(init=False)

    def __post_init__(self) -> None:
        self.recognizes = self.cfg.recognize
        model_dir = check_easyocr_weights(self.cfg)
        try:
            import easyocr
        except ImportError as exc:
            raise ImportError(
                f"the easyocr detector needs the easyocr package ({exc}); install it with "
                "`pip install 'weldray[easyocr]'` or use text_removal.detector=rapidocr"
            ) from None
        if self.cfg.num_threads > 0:
            import torch

            torch.set_num_threads(self.cfg.num_threads)
        self._reader = easyocr.Reader(
            list(self.cfg.easyocr_langs),
            gpu=resolve_device(self.cfg.device) == "cuda",
            model_storage_directory=str(model_dir),
            download_enabled=False,
            detector=True,
            recognizer=self.recognizes,
            verbose=False,
        )

    def detect(self, image: np.ndarray) -> list[Detection]:
        if self.recognizes:
            out = self._reader.readtext(image)
            # easyocr reports no separate detection score: CRAFT's own thresholds already applied.
            return [
                Detection(box=np.asarray(b, np.float32), det_score=1.0, text=str(t), text_score=float(s))
                for b, t, s in out
            ]
        horizontal, free = self._reader.detect(image)
        dets = [
            Detection(box=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32), det_score=1.0)
            for x0, x1, y0, y1 in horizontal[0]
        ]
        dets += [Detection(box=np.asarray(p, np.float32), det_score=1.0) for p in free[0]]
        return dets


@register_detector("easyocr")
def _easyocr(cfg: TextRemovalConfig) -> TextDetector:
    return EasyOCRDetector(cfg)
