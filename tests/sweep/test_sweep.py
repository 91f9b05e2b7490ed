"""`weldray sweep` end to end on the procedural sample, as a user runs it (the CLI in a subprocess, its own
private Ray): the files it writes hold what they say, best.yaml reproduces the chosen trial's recipe, a
killed sweep continues where it stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from tests.conftest import REPO_ROOT
from weldray.config import load_config
from weldray.sweep.run import EXPERIMENT_SAVE_S
from weldray.training.cv import recipe_fingerprint

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

WELDRAY = [str(Path(sys.executable).with_name("weldray"))]
PNG = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    path = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _sweep(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*WELDRAY, "sweep", *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _config_of(run_dir: str | Path) -> dict:
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text())


def _recipe_from_run(run_dir: str | Path) -> str:
    """The recipe hash of the config a run wrote (config.yaml), as `weldray train` composed it."""
    from omegaconf import OmegaConf

    from weldray.config import WeldrayConfig

    merged = OmegaConf.merge(OmegaConf.structured(WeldrayConfig), OmegaConf.create(_config_of(run_dir)))
    return recipe_fingerprint(OmegaConf.to_object(merged))


def _check_outputs(sweep_dir: Path, n_trials: int) -> pd.DataFrame:
    table = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(table) == n_trials and table["trial"].is_unique
    assert table["trial"].str.startswith("trial-").all()
    csv = pd.read_csv(sweep_dir / "trials.csv")
    assert list(csv["trial"]) == list(table["trial"])
    study = json.loads((sweep_dir / "study.json").read_text())
    for key, dist in study["space"].items():
        values = table[f"param.{key}"]
        assert values.between(dist["low"], dist["high"]).all(), key
    for _, row in table.iterrows():
        history = json.loads(row["history"])
        assert [h["epochs_done"] for h in history] == list(range(1, row["epochs_done"] + 1))
        assert row["val_loss_best"] == pytest.approx(min(h["val_loss"] for h in history))
        config = _config_of(row["run_dir"])  # the trial's own `weldray train` run
        assert config["training"]["run_name"] == row["trial"] and config["training"]["holdout"] is True
        for key in study["space"]:
            group, name = key.split(".")
            assert config[group][name] == pytest.approx(row[f"param.{key}"])
    report = (sweep_dir / "report.md").read_text()
    for name in ("history.png", "slices.png", "parallel_coordinates.png"):
        assert f"]({name})" in report and (sweep_dir / name).read_bytes().startswith(PNG), name
    for trial in table["trial"]:
        assert trial in report
    return table


@pytest.mark.slow  # a whole `weldray sweep` in a subprocess, ~3 min
def test_two_trial_sweep_writes_its_files_and_best_yaml_reproduces_the_trial(
    procedural_dir: Path, tmp_path: Path
) -> None:
    """No scheduler, no confirmation (sweep.top_k=0): best.yaml is the best trial by the metric."""
    proc = _sweep(
        "smoke", str(procedural_dir), f"output_dir={tmp_path}", "sweep.num_samples=2", "sweep.top_k=0",
        "sweep.scheduler=none", "training.epochs=1",
    )
    sweep_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert sweep_dir == tmp_path / "sweeps" / "smoke"
    table = _check_outputs(sweep_dir, 2)
    assert set(table["status"]) == {"completed"} and set(table["epochs_done"]) == {1}

    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    winner = table.sort_values("val_loss_best").iloc[0]
    assert best["chosen"] == winner["trial"] and "not confirmed" in best["reason"]
    assert best["overrides"][-2:] == [
        f"training.lr={float(winner['param.training.lr'])!r}", f"model.margin={float(winner['param.model.margin'])!r}"
    ]
    printed = subprocess.run(
        [*WELDRAY, "sweep-best", str(sweep_dir)], capture_output=True, text=True, env=_env(), check=True
    ).stdout.strip().splitlines()[-1]
    assert printed.split() == best["overrides"]
    # `weldray train DATA $(weldray sweep-best DIR)` composes the trial's recipe exactly.
    cfg = load_config([*printed.split(), f"data.root={best['data']}"])
    assert recipe_fingerprint(cfg) == _recipe_from_run(winner["run_dir"])


@pytest.mark.slow
def test_smoke_sweep_with_asha_and_confirmation(procedural_dir: Path, tmp_path: Path) -> None:
    """smoke.yaml as shipped: 3 trials with ASHA, the best re-evaluated with the default on 2 folds."""
    t0 = time.monotonic()
    proc = _sweep("smoke", str(procedural_dir), f"output_dir={tmp_path}")
    print(f"smoke sweep: {time.monotonic() - t0:.0f} s")
    sweep_dir = Path(proc.stdout.strip().splitlines()[-1])
    table = _check_outputs(sweep_dir, 3)
    assert set(table["status"]) <= {"completed", "stopped_asha"}
    confirmation = json.loads((sweep_dir / "confirmation.json").read_text())
    labels = [c["label"] for c in confirmation["candidates"]]
    best_trial = table.sort_values("val_loss_best").iloc[0]["trial"]
    assert sorted(labels) == sorted(["default", best_trial]) and confirmation["folds"] == [0, 1]
    for c in confirmation["candidates"]:
        summary = json.loads((sweep_dir / "cv" / f"confirm-{c['label']}.json").read_text())
        assert [f["balanced_accuracy"] for f in summary["folds"]] == c["per_fold"]
        assert [f["fold"] for f in summary["folds"]] == [0, 1]
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["chosen"] == confirmation["winner"]
    report = (sweep_dir / "report.md").read_text()
    assert "## Confirmation by cross-validation" in report and confirmation["verdict"] in report
    # The chosen configuration's CV fold was trained with exactly best.yaml's recipe.
    cfg = load_config([*best["overrides"], f"data.root={best['data']}"])
    assert recipe_fingerprint(cfg) == _recipe_from_run(sweep_dir / "runs" / f"confirm-{best['chosen']}-fold0")


def _finished_trials(tune_dir: Path) -> dict[str, int]:
    """trial -> lines in its result.json (one per reported epoch)."""
    out = {}
    for result in tune_dir.glob("trial-*/result.json"):
        out[result.parent.name] = len(result.read_text().splitlines())
    return out


@pytest.mark.slow
def test_killed_sweep_continues_without_rerunning_finished_trials(procedural_dir: Path, tmp_path: Path) -> None:
    args = [
        "smoke", str(procedural_dir), f"output_dir={tmp_path}", "sweep.num_samples=3", "sweep.top_k=0",
        "sweep.scheduler=none",
    ]
    tune_dir = tmp_path / "sweeps" / "smoke" / "tune"
    runs_dir = tmp_path / "sweeps" / "smoke" / "runs"
    driver = subprocess.Popen(
        [*WELDRAY, "sweep", *args], env=_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # Kill it while a trial trains, a few of Tune's experiment-state periods (EXPERIMENT_SAVE_S) after another
        # trial's run finished (its metrics.json is the last file `weldray train` writes; two trials run at once).
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            done = {t: n for t, n in _finished_trials(tune_dir).items() if (runs_dir / t / "metrics.json").is_file()}
            if done and len(_finished_trials(tune_dir)) > len(done) and driver.poll() is None:
                break
            assert driver.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no trial finished in time")
        first = {t: (tune_dir / t / "result.json").read_text() for t in done}
        time.sleep(3 * float(EXPERIMENT_SAVE_S))
        assert driver.poll() is None, "the sweep ended before it could be killed"
        tree = psutil.Process(driver.pid).children(recursive=True)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    for p in tree:  # the private Ray instance dies with its driver; make sure of it
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()

    proc = _sweep(*args)
    sweep_dir = Path(proc.stdout.strip().splitlines()[-1])
    table = _check_outputs(sweep_dir, 3)
    assert set(table["status"]) == {"completed"}
    for trial, text in first.items():
        assert trial in set(table["trial"])
        assert (tune_dir / trial / "result.json").read_text() == text, f"{trial} was run again"
    # The searcher kept its state: a fresh seeded TPE would propose the first trial's values again.
    params = table[["param.training.lr", "param.model.margin"]].round(12)
    assert not params.duplicated().any(), params
