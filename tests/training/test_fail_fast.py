"""Deterministic errors (weights, data root) surface once, on the driver, before Ray or any worker starts;
and two weldray commands at once on one machine each keep to their own private Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weldray.cli import app

WELDRAY = [str(Path(sys.executable).with_name("weldray"))]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def test_missing_weights_exit_within_seconds_with_one_message_and_no_retry(
    procedural_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no_such_weights.pt"
    t0 = time.monotonic()
    proc = subprocess.run(
        [*WELDRAY, "train", str(procedural_dir), "profile=quick_test", "model.pretrained=true",
         f"model.weights={missing}", f"output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    elapsed = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert output.count(str(missing)) == 1, output  # one message, not one per worker and retry
    assert "Traceback" not in output
    # Nothing of Ray ran: no local instance, no Train worker, no FailureConfig retry.
    assert "started local Ray" not in output and "RayTrainWorker" not in output
    assert elapsed < 60, f"{elapsed:.0f} s: the error must come before Ray starts"


def test_box_crops_without_box_labels_fail_before_ray_starts(procedural_dir: Path, tmp_path: Path) -> None:
    from weldray.config import ConfigError, load_config
    from weldray.training import train

    cfg = load_config(
        ["profile=quick_test", f"data.root={procedural_dir}", f"output_dir={tmp_path}", "training.box_crop_prob=0.5"]
    )
    with pytest.raises(ConfigError, match=r"training.box_crop_prob.*none of the \d+ training photos has any"):
        train(cfg)
    assert not (tmp_path / "ray_results").exists()


def test_pipeline_checks_every_selected_stage_before_running_any(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.pt"
    run_name = "preflight"
    result = CliRunner().invoke(
        app,
        ["pipeline", "profile=quick_test", "model.pretrained=true", f"model.weights={missing}",
         f"output_dir={tmp_path}", f"pipeline.run_name={run_name}", f"data.procedural.out_dir={tmp_path / 'proc'}"],
    )
    assert result.exit_code == 1, result.output
    assert str(missing) in result.output and "Traceback" not in result.output
    # The clean stage (minutes on real photos) did not run first: no stage was recorded, nothing cleaned.
    assert not (tmp_path / "pipelines" / run_name / "pipeline.json").exists()
    assert not (tmp_path / "pipelines" / run_name / "clean").exists()


def test_missing_data_root_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nowhere"), "profile=quick_test"])
    assert result.exit_code == 1
    assert "nowhere" in result.output and "Traceback" not in result.output


@pytest.mark.ray
def _assert_quiet_console(output: str) -> None:
    """What a person sees of a training: the driver's live epoch bar (once, at 1/1), none of Ray's internals
    (worker and actor output, Ray Data's plans, deprecation warnings: they stay in Ray's log folder, named)."""
    import re

    for noise in ("(RayTrainWorker", "(TrainController", "(SplitCoordinator", "Execution plan", "Deprecat"):
        assert noise not in output, (noise, output[-3000:])
    assert len(re.findall(r"━ 1/1 epochs", output)) == 1, output[-3000:]
    assert "Ray's logs (workers, Ray Data):" in output


@pytest.mark.slow  # two full trainings side by side, ~2 min
def test_two_trainings_at_once_both_succeed(procedural_dir: Path, tmp_path: Path) -> None:
    """Two `weldray train` runs side by side, each on its own private local Ray instance. Before, Ray
    Train's placement-group cleaner of one run found both instances and failed (or, with a dashboard on
    the default port, asked the other instance about its controller)."""
    procs = [
        subprocess.Popen(
            [*WELDRAY, "train", str(procedural_dir), "profile=quick_test", "training.epochs=1",
             f"output_dir={tmp_path / name}", f"ray.storage_path={tmp_path / name / 'ray'}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for name, proc, output in zip(("a", "b"), procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert "multiple active Ray instances" not in output, output[-3000:]
        _assert_quiet_console(output)
        run_dir = Path(output.strip().splitlines()[-1])
        assert run_dir.parent == tmp_path / name / "runs"
        assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1
