"""Text removal: OCR text detection + inpainting, run over a dataset with Ray Data.

Public API::

    from weldray.text_removal import TextCleaner, clean_dataset
    cleaner = TextCleaner(cfg.text_removal)        # one detector + inpainter
    result = cleaner.clean(rgb_uint8_image)         # .image, .mask, .detections
    report = clean_dataset("data/welds", "data/welds_clean", cfg)   # the Ray Data job

Detectors (``rapidocr``, ``easyocr``) and inpainters (``opencv``, ``lama``) live in small
registries; add one with :func:`register_detector` / :func:`register_inpainter`. The text segmenter
(:class:`TextSegmenter`, ``text_removal.segmenter``) completes what the detector found with the faint
parts it missed; ``weldray train-segmenter`` retrains its weights.
"""

from weldray.text_removal.cleaner import CleanResult, TextCleaner, text_mask
from weldray.text_removal.detectors import (
    Detection,
    MissingWeightsError,
    TextDetector,
    create_detector,
    filter_detections,
    list_detectors,
    register_detector,
)
from weldray.text_removal.inpainters import Inpainter, create_inpainter, list_inpainters, register_inpainter
from weldray.text_removal.pipeline import CleanReport, clean_dataset
from weldray.text_removal.segmenter import TextSegmenter

__all__ = [
    "CleanReport",
    "CleanResult",
    "Detection",
    "Inpainter",
    "MissingWeightsError",
    "TextCleaner",
    "TextDetector",
    "TextSegmenter",
    "clean_dataset",
    "create_detector",
    "create_inpainter",
    "filter_detections",
    "list_detectors",
    "list_inpainters",
    "register_detector",
    "register_inpainter",
    "text_mask",
]
