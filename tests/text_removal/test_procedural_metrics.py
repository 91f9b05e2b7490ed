from __future__ import annotations

import pytest

from weldray.text_removal import TextCleaner
from weldray.text_removal.evaluate import evaluate_procedural


def test_procedural_metrics_smoke(tr_cfg):
    """Two pairs: the text-free renders get nothing inpainted and stay byte-identical."""
    m = evaluate_procedural(TextCleaner(tr_cfg), 2, size=320, seed=3)
    assert m.n_text == 2 and m.n_text_free == 2
    assert m.text_free_area_max <= 0.01 and m.bead_change_mean < 0.5
    assert 0.0 < m.text_recall <= 1.0


@pytest.mark.slow
def test_procedural_metrics_16_pairs(tr_cfg):
    """Regression guard at the measured level (README): text-free area <= 1% is met; text-pixel
    recall is ~0.7, below the 0.98 goal, because the masks include marker circles, arrows and
    banners that an OCR detector does not see, and faint watermarks are often missed."""
    m = evaluate_procedural(TextCleaner(tr_cfg), 16, size=320, seed=0)
    assert m.text_free_area_max <= 0.01
    assert m.bead_change_mean < 0.5
    assert m.recall_by_kind["printed"] >= 0.8
    assert m.text_recall >= 0.65
