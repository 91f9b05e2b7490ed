"""The searcher a sweep builds: seeded TPE, constant liar only with concurrent trials, optional Optuna storage."""

from __future__ import annotations

from pathlib import Path

import optuna

from weldray.sweep.run import _searcher
from weldray.sweep.space import load_space


def test_searcher_is_seeded_tpe_with_constant_liar_when_concurrent() -> None:
    study = load_space("smoke", ["sweep.seed=7"])
    one, many = _searcher(study, 1), _searcher(study, 3)
    for searcher, liar in ((one, False), (many, True)):
        sampler = searcher._ot_study.sampler
        assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._constant_liar is liar
    # Same seed, same first proposals.
    first = _searcher(study, 1).suggest("t0")
    assert first == _searcher(study, 1).suggest("t0") and set(first) == set(study.space)


def test_optuna_storage_records_the_study_for_the_dashboard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load_space("smoke", [f"sweep.storage={url}", "sweep.name=stored"])
    searcher = _searcher(study, 1)
    searcher.suggest("trial-a")
    searcher.on_trial_complete("trial-a", {"val_loss_best": 0.5})
    loaded = optuna.load_study(study_name="stored", storage=url)
    assert [t.value for t in loaded.trials] == [0.5]
    assert set(loaded.trials[0].params) == {"training.lr", "model.margin"}
