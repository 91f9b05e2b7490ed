"""Text detection + inpainting (``text_removal.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from weldray.config._base import ConfigError, check_choice, check_fraction, check_positive

DETECTORS = ("rapidocr", "easyocr")
SEGMENTERS = ("textseg", "none")
INPAINTERS = ("opencv", "lama")
OPENCV_METHODS = ("telea", "ns")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TextRemovalConfig:
    enabled: bool = True
    detector: str = "rapidocr"
    inpainter: str = "opencv"
    # Mask dilation around detected text, in pixels at 640 px (scaled with the image's short side); avoids halos.
    dilation_px: int = 25
    # Recognise the text in each detected box; needed for the score filter against weld ripples.
    recognize: bool = True
    # Minimum recognition confidence for a detected box to count as text (when recognize=true).
    min_text_score: float = 0.7
    # Minimum detector confidence of a box.
    min_det_score: float = 0.5
    # Recognised text needs at least this many letters/digits (ripples read as "-", "|", ".").
    min_text_chars: int = 1
    # Reads of at most ``short_text_chars`` letters/digits need ``min_short_text_score``: the recogniser turns
    # any blob into one letter (holes read "0", pores "8", pliers "A" at 0.6-0.9), words it rarely invents.
    short_text_chars: int = 2
    min_short_text_score: float = 0.9
    # Widest plausible character (width / line height); ripples read as "CCC" over a whole bead.
    max_char_aspect: float = 2.0
    # Box geometry filters, relative to the image: text lines are short and flat; ripples
    # and whole beads give tall or huge boxes.
    min_box_height_px: int = 6
    max_box_height_fraction: float = 0.3
    max_box_area_fraction: float = 0.4
    # Most inpaint rounds per image. After each round the image is encoded as it will be written, decoded
    # and searched again (text under captions, leftovers of a letter); the search that finds nothing, or the
    # one after the last round, is the audit of the written file.
    passes: int = 3
    # Detector input scale (rapidocr: a shorter side below this is upscaled to it; larger images are
    # detected at their own size).
    det_limit_side_len: int = 640
    # Extra detection scales (same meaning as det_limit_side_len) for images with a shorter side below
    # det_limit_side_len (upscaled for detection); their boxes are added to the first scale's. Large faint
    # watermarks are found at one scale and missed at another.
    det_extra_side_lens: list[int] = field(default_factory=lambda: [480, 736, 1024])
    # rapidocr DB post-processing: probability-map binarisation threshold (lower finds fainter text) and
    # how far each found region is grown into its box (larger boxes reach the ends of letters).
    det_thresh: float = 0.3
    det_unclip_ratio: float = 1.6
    # Text segmenter beside the OCR detector (faint watermarks PP-OCR misses; see weldray.text_removal.segmenter):
    # textseg (weights shipped in the package, or segmenter_model_path) | none. A region is text when its peak
    # glyph probability reaches segmenter_threshold (grown down to half of it), it covers at least
    # segmenter_min_area of the image and it lies within segmenter_reach_px (pixels at 640 px, scaled like
    # dilation_px) of text the OCR detector kept: it completes found text (faint watermark tiles and letters) and
    # never opens an image alone, because on real beads its false alarms are too frequent for that
    # (docs/text_removal.md).
    # segmenter_reach_px null: anywhere.
    segmenter: str = "textseg"
    segmenter_model_path: str | None = None
    segmenter_threshold: float = 0.7
    segmenter_min_area: float = 0.001
    segmenter_reach_px: int | None = 50
    # Join kept boxes that continue one text line across a gap (a watermark crossing the bright bead is
    # found as two pieces): same direction and height, gap at most this many line heights; 0 = off.
    bridge_gap: float = 3.0
    # Inpainting.
    opencv_method: str = "telea"
    inpaint_radius: int = 5
    # Local model files (never downloaded at run time).
    easyocr_model_dir: str | None = None
    easyocr_langs: list[str] = field(default_factory=lambda: ["en"])
    lama_model_path: str | None = None
    # Where models run: auto -> CUDA when available.
    device: str = "auto"
    # Intra-op threads per model instance (onnxruntime / torch); 0 -> library default.
    num_threads: int = 1
    # Ray Data actor pool. Actors must not take every CPU or the read tasks starve (deadlock).
    concurrency: int = 2
    num_cpus_per_actor: float = 0.5
    num_gpus_per_actor: float = 0.0
    batch_size: int = 4
    # Re-run the detector on each cleaned image and record residual detections.
    audit: bool = True
    # Images with the largest masks shown before/after in the contact sheet.
    contact_sheet_size: int = 12
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        check_choice("text_removal.detector", self.detector, DETECTORS)
        check_choice("text_removal.inpainter", self.inpainter, INPAINTERS)
        check_choice("text_removal.segmenter", self.segmenter, SEGMENTERS)
        check_fraction("text_removal.segmenter_threshold", self.segmenter_threshold, inclusive_high=True)
        check_fraction("text_removal.segmenter_min_area", self.segmenter_min_area)
        if self.segmenter_reach_px is not None:
            check_positive("text_removal.segmenter_reach_px", self.segmenter_reach_px, allow_zero=True)
        check_choice("text_removal.opencv_method", self.opencv_method, OPENCV_METHODS)
        check_choice("text_removal.device", self.device, DEVICES)
        check_positive("text_removal.dilation_px", self.dilation_px, allow_zero=True)
        check_fraction("text_removal.min_text_score", self.min_text_score, inclusive_high=True)
        check_fraction("text_removal.min_det_score", self.min_det_score, inclusive_high=True)
        check_positive("text_removal.min_text_chars", self.min_text_chars, allow_zero=True)
        check_positive("text_removal.short_text_chars", self.short_text_chars, allow_zero=True)
        check_fraction("text_removal.min_short_text_score", self.min_short_text_score, inclusive_high=True)
        check_positive("text_removal.max_char_aspect", self.max_char_aspect)
        check_positive("text_removal.min_box_height_px", self.min_box_height_px, allow_zero=True)
        check_fraction("text_removal.max_box_height_fraction", self.max_box_height_fraction, inclusive_high=True)
        check_fraction("text_removal.max_box_area_fraction", self.max_box_area_fraction, inclusive_high=True)
        for key, side in [("det_limit_side_len", self.det_limit_side_len)] + [
            ("det_extra_side_lens", s) for s in self.det_extra_side_lens
        ]:
            if side < 32:
                raise ConfigError(f"text_removal.{key}", f"must be >= 32, got {side}")
        check_positive("text_removal.passes", self.passes)
        check_fraction("text_removal.det_thresh", self.det_thresh)
        check_positive("text_removal.det_unclip_ratio", self.det_unclip_ratio)
        check_positive("text_removal.bridge_gap", self.bridge_gap, allow_zero=True)
        check_positive("text_removal.inpaint_radius", self.inpaint_radius)
        if not self.easyocr_langs:
            raise ConfigError("text_removal.easyocr_langs", "needs at least one language code, e.g. ['en']")
        check_positive("text_removal.num_threads", self.num_threads, allow_zero=True)
        check_positive("text_removal.concurrency", self.concurrency)
        check_positive("text_removal.num_cpus_per_actor", self.num_cpus_per_actor)
        check_positive("text_removal.num_gpus_per_actor", self.num_gpus_per_actor, allow_zero=True)
        check_positive("text_removal.batch_size", self.batch_size)
        check_positive("text_removal.contact_sheet_size", self.contact_sheet_size, allow_zero=True)
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("text_removal.jpeg_quality", f"must be in [1, 100], got {self.jpeg_quality}")
