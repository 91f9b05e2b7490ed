"""Evaluation: metrics, calibration, TTA and the run report. ``evaluate(run_dir, cfg) -> report path``."""

from weldray.evaluation.evaluate import evaluate
from weldray.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from weldray.evaluation.predict import TTA_VIEWS, predict_logits
from weldray.evaluation.report import evaluate_rows

__all__ = [
    "TTA_VIEWS",
    "classification_metrics",
    "evaluate",
    "evaluate_rows",
    "expected_calibration_error",
    "fit_temperature",
    "predict_logits",
    "softmax",
]
