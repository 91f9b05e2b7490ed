"""The searcher a sweep builds: seeded TPE, constant liar only with concurrent trials, optional Optuna storage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

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


def test_a_trial_trains_a_run_named_after_it_with_its_values_as_dashboard_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Ray dashboard's Train page shows for a trial: the run named trial-<id>, and in its run settings
    (train_loop_config) the sweep, the trial and its sampled values."""
    from weldray.sweep.run import run_trial
    from weldray.training.trainer import run_id_for

    trained: dict = {}
    monkeypatch.setattr("ray.tune.get_context", lambda: SimpleNamespace(get_trial_name=lambda: "trial-ab12"))
    monkeypatch.setattr("weldray.training.trainer.train", lambda cfg, **kw: trained.update(cfg=cfg, **kw))
    monkeypatch.setattr("weldray.sweep.run._report_callback", lambda: "to Tune")  # needs a Tune session
    params = {"training.lr": 0.002, "model.margin": 0.4}
    run_trial(params, study=load_space("smoke"), sweep_dir=str(tmp_path), data_root=str(tmp_path / "m.parquet"))
    assert run_id_for(trained["cfg"]) == "trial-ab12"  # RunConfig(name=...) of its TorchTrainer
    assert trained["cfg"].training.lr == 0.002 and trained["cfg"].model.margin == 0.4
    assert trained["run_labels"] == {"sweep": "smoke", "trial": "trial-ab12", **params}
    assert trained["callbacks"] == ["to Tune"]


def test_turning_a_tracker_on_is_a_change_of_the_sweep_but_records_without_trackers_still_match(
    tmp_path: Path,
) -> None:
    """A continued Tuner keeps the callbacks it started with, so a tracker switched on under the same name is
    refused; a sweep recorded before the trackers existed continues unchanged."""
    import json

    from weldray.config import ConfigError
    from weldray.sweep.run import check_same_study, study_record

    plain = study_record(load_space("smoke"), "/data")
    assert "mlflow" not in plain["sweep"] and "wandb" not in plain["sweep"]  # what older study.json files hold
    (tmp_path / "study.json").write_text(json.dumps(plain))
    check_same_study(tmp_path, study_record(load_space("smoke"), "/data"))
    with pytest.raises(ConfigError, match="sweep.name: .* other sweep"):
        check_same_study(tmp_path, study_record(load_space("smoke", ["sweep.mlflow.enabled=true"]), "/data"))
