"""Space files: the shipped ones load; every kind of mistake fails before any trial, naming file, key, reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from weldray.config import ConfigError
from weldray.sweep.space import SpaceError, load_space, spaces_dir


def _space(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


def _error(path: Path, *overrides: str) -> str:
    with pytest.raises(SpaceError) as info:
        load_space(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("name", ["smoke", "optimizer", "arcface_mixup_ratio"])
def test_shipped_spaces_load(name: str) -> None:
    study = load_space(name)
    assert study.path == spaces_dir() / f"{name}.yaml"
    assert study.name == name and study.space
    assert "training.mix_real_ratio" not in study.space


def test_sweep_settings_from_file_then_command_line(tmp_path: Path) -> None:
    path = _space(
        tmp_path,
        "sweep: {num_samples: 5, scheduler: none}\noverrides: [profile=quick_test]\n"
        "space:\n  training.batch_size: {type: int, low: 4, high: 16, step: 4}\n"
        "  training.optimizer: {type: choice, values: [adamw, ranger21]}\n",
    )
    study = load_space(path, ["sweep.num_samples=20", "sweep.name=mine", "training.epochs=3"])
    assert study.sweep.num_samples == 20 and study.sweep.scheduler == "none" and study.name == "mine"
    assert study.overrides == ["profile=quick_test", "training.epochs=3"]
    assert study.trial_overrides({"training.batch_size": 8, "training.optimizer": "ranger21"})[-2:] == [
        "training.batch_size=8",
        "training.optimizer=ranger21",
    ]


def test_unknown_key(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  training.learning_rate: {type: float, low: 0.001, high: 0.01}\n")
    msg = _error(path)
    assert str(path) in msg and "training.learning_rate" in msg and "unknown config key" in msg


def test_float_range_on_int_key(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  training.batch_size: {type: float, low: 8, high: 32}\n")
    msg = _error(path)
    assert str(path) in msg and "training.batch_size" in msg and "float range does not fit a key of type int" in msg


def test_choice_value_of_wrong_type(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  training.epochs: {type: choice, values: [4, 6.5]}\n")
    assert "training.epochs: value 6.5 does not fit a key of type int" in _error(path)


def test_bounds_the_config_rejects(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  model.margin: {type: float, low: 0.2, high: 2.0}\n")
    msg = _error(path)
    assert str(path) in msg and "model.margin: the config rejects 2.0" in msg and "[0, 1.6)" in msg


def test_choice_the_config_rejects(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  training.optimizer: {type: choice, values: [adamw, sgd]}\n")
    assert "training.optimizer: the config rejects 'sgd'" in _error(path)


def test_bad_distributions(tmp_path: Path) -> None:
    for body, reason in [
        ("model.margin: {type: float, low: 0.5, high: 0.1}", "low must be < high"),
        ("training.lr: {type: float, low: 0, high: 0.1, log: true}", "a log range needs low > 0"),
        ("model.margin: {type: normal, low: 0.1, high: 0.5}", "needs a mapping with type"),
        ("model.margin: {type: float, low: 0.1, high: 0.5, scale: 2}", "unknown field(s) ['scale']"),
        ("training.epochs: {type: int, low: 2, high: 5.5}", "an int range needs integer"),
    ]:
        msg = _error(_space(tmp_path, f"space:\n  {body}\n"))
        assert body.split(":")[0] in msg and reason in msg, msg


def test_inert_and_reserved_keys(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  training.mix_real_ratio: {type: float, low: 0.25, high: 1.0}\n")
    assert "training.mix_real_ratio: inert until a synthetic dataset is configured" in _error(path)
    # With synthetic images configured the ratio is a real knob and may be searched.
    from weldray.sweep.space import load_space

    study = load_space(path, [f"training.synthetic_data={tmp_path}"])
    assert "training.mix_real_ratio" in study.space
    path = _space(tmp_path, "space:\n  training.cv_fold: {type: int, low: 0, high: 4}\n")
    assert "training.cv_fold: set by the sweep" in _error(path)


def test_head_and_mixup_knobs_are_inert_where_the_recipe_has_no_such_part(tmp_path: Path) -> None:
    """The cpu recipe's softmax head has no margin and its MixUp is off: searching either would fit noise, unless
    the space fixes (or searches) the switch that makes them live."""
    margin = "space:\n  model.margin: {type: float, low: 0.1, high: 0.5}\n"
    path = _space(tmp_path, margin)
    assert "model.margin: a softmax head has no margin or scale" in _error(path)
    assert "model.margin" in load_space(path, ["model.head=arcface"]).space
    path = _space(tmp_path, margin + "  model.head: {type: choice, values: [softmax, cosface]}\n")
    assert set(load_space(path).space) == {"model.margin", "model.head"}
    path = _space(tmp_path, "space:\n  training.cutmix_alpha: {type: float, low: 0.0, high: 1.5}\n")
    assert "training.cutmix_alpha: MixUp/CutMix is off" in _error(path)
    assert "training.cutmix_alpha" in load_space(path, ["training.mixup_prob=0.5"]).space


def test_searched_key_fixed_on_the_command_line(tmp_path: Path) -> None:
    path = _space(tmp_path, "space:\n  model.margin: {type: float, low: 0.1, high: 0.5}\n")
    assert "model.margin: searched by this space and also fixed" in _error(path, "model.margin=0.3")


def test_bad_fixed_override_and_sweep_setting(tmp_path: Path) -> None:
    path = _space(
        tmp_path, "overrides: [training.epochs=0]\nspace:\n  model.margin: {type: float, low: 0.1, high: 0.5}\n"
    )
    assert "training.epochs: must be > 0" in _error(path)
    path = _space(tmp_path, "space:\n  model.margin: {type: float, low: 0.1, high: 0.5}\n")
    msg = _error(path, "sweep.scheduler=hyperband")
    assert str(path) in msg and "sweep.scheduler" in msg and "'asha', 'none'" in msg
    msg = _error(path, "sweep.num_sampels=3")
    assert "sweep.num_sampels" in msg
    with pytest.raises(ConfigError, match="key=value"):
        load_space(path, ["sweep.num_samples"])


def test_missing_space_file_names_the_known_ones() -> None:
    with pytest.raises(FileNotFoundError, match="smoke"):
        load_space("no_such_space")


def test_cli_refuses_a_bad_space_before_ray_starts(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = _space(tmp_path, "space:\n  training.batch_size: {type: float, low: 8, high: 32}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("weldray")), "sweep", str(path), f"output_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"config error: {path}: training.batch_size: a float range" in " ".join(proc.stderr.split())
    assert "started local Ray" not in proc.stderr and not (tmp_path / "sweeps").exists()
