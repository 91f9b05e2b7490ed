"""The confirmation's decision on fabricated per-fold scores: the default wins ties and noise."""

from __future__ import annotations

import pytest

from weldray.sweep.confirm import DEFAULT, compare

FOLDS = [0, 1, 2, 3, 4]


def test_tie_keeps_the_default() -> None:
    same = [0.8, 0.75, 0.9, 0.7, 0.85]
    result = compare({DEFAULT: same, "trial-a": list(same), "trial-b": list(same)}, FOLDS)
    assert result["winner"] == DEFAULT
    assert "No candidate beats the default beyond fold-to-fold noise" in result["verdict"]
    assert all(not c["beats_default"] and c["mean_diff"] == 0 for c in result["candidates"])


def test_higher_mean_within_noise_keeps_the_default() -> None:
    # Better on average (+0.02) but the paired differences swing +-0.1: not beyond two standard errors.
    result = compare({DEFAULT: [0.8, 0.8, 0.8, 0.8, 0.8], "trial-a": [0.9, 0.7, 0.9, 0.7, 0.9]}, FOLDS)
    a = next(c for c in result["candidates"] if c["label"] == "trial-a")
    assert a["mean"] > 0.8 and not a["beats_default"]
    assert result["winner"] == DEFAULT


def test_consistent_gain_wins_and_the_highest_mean_among_winners() -> None:
    scores = {
        DEFAULT: [0.70, 0.75, 0.80, 0.72, 0.78],
        "trial-a": [0.75, 0.79, 0.86, 0.77, 0.82],  # +0.04..0.06 on every fold
        "trial-b": [0.73, 0.78, 0.83, 0.75, 0.81],  # +0.03 on every fold... smaller mean
        "trial-c": [0.95, 0.60, 0.95, 0.60, 0.95],  # highest mean, pure noise
    }
    result = compare(scores, FOLDS)
    by = {c["label"]: c for c in result["candidates"]}
    assert by["trial-a"]["diff"] == pytest.approx([0.05, 0.04, 0.06, 0.05, 0.04])
    assert by["trial-a"]["beats_default"] and by["trial-b"]["beats_default"] and not by["trial-c"]["beats_default"]
    assert result["winner"] == "trial-a"
    assert result["verdict"].startswith("trial-a beats the default")
