"""Procedural samples with exact text masks, rendered once per session."""

from __future__ import annotations

import numpy as np
import pytest


def _render_until(kinds: set[str] | None, *, size: int = 320, start: int = 0):
    from weldray.data.procedural import render_weld

    for i in range(start, start + 200):
        s = render_weld(
            np.random.default_rng([11, i]), label="good_weld", size=size, with_text=kinds is not None
        )
        if kinds is None or set(s.text_kinds) == kinds:
            return s
    raise AssertionError(f"no procedural sample with text kinds {kinds} in 200 seeds")


@pytest.fixture(scope="session")
def printed_sample():
    """A 320 px procedural weld with printed text only (IDs, dates)."""
    return _render_until({"printed"})


@pytest.fixture(scope="session")
def text_free_samples():
    """Three text-free procedural welds (bead ripples, spatter, plate texture)."""
    return [_render_until(None, start=i) for i in (0, 1, 2)]


@pytest.fixture(scope="session")
def tr_cfg():
    from weldray.config import load_config

    return load_config([]).text_removal


@pytest.fixture(scope="session")
def default_cleaner(tr_cfg):
    """A TextCleaner with the default settings (loads the OCR models once)."""
    from weldray.text_removal import TextCleaner

    return TextCleaner(tr_cfg)
