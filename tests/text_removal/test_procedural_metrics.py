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
def test_procedural_metrics_40_pairs(tr_cfg):
    """Guard at the level reached (README table, 40 pairs at 320 px, seed 0): glyph recall 0.958 overall,
    >= 0.99 on printed text and titles; nothing inpainted on text-free welds, bead untouched. The 0.98
    overall goal is NOT met: two faint watermarks (one lying on the bright bead) are never detected."""
    m = evaluate_procedural(TextCleaner(tr_cfg), 40, size=320, seed=0)
    assert m.text_free_area_max <= 0.01 and m.text_free_false_images == 0
    assert m.bead_change_mean < 0.5
    assert m.recall_by_kind["printed"] >= 0.98 and m.recall_by_kind["title"] >= 0.98
    assert m.text_recall >= 0.95
    assert m.overlay_recall < m.text_recall  # banners/marker strokes are not text and are not chased
