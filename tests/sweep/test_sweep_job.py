"""A sweep submitted as a Ray job to a real two-node cluster (``jobs/sweep.py``, the repository as working_dir):
it succeeds and prints the sweep folder last."""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from weldray.cluster import jobs
from weldray.cluster.local import LocalCluster, LocalClusterConfig, find_free_port_base

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="wrs-", dir="/tmp"))  # short: Ray's unix sockets live under it
    with LocalCluster(
        LocalClusterConfig(temp_dir=temp_dir, port_base=find_free_port_base(27400), start_timeout_s=240)
    ) as running:
        yield running
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_job_on_two_nodes(cluster: LocalCluster, tmp_path: Path) -> None:
    client = cluster.job_client()
    out = tmp_path / "outputs"
    args = ["smoke", "sweep.num_samples=2", "sweep.top_k=0", "sweep.scheduler=none", "training.epochs=1",
            f"output_dir={out}"]
    submission_id = jobs.submit(
        client, shlex.join(["python", "jobs/sweep.py", *args]), required=("jobs/sweep.py", "tune_spaces/smoke.yaml")
    )
    result = jobs.wait(client, submission_id, timeout_s=1500, poll_s=5)
    (tmp_path / "job.log").write_text(result.logs)
    assert result.status == "SUCCEEDED", result.logs[-4000:]
    sweep_dir = Path(result.last_line)
    assert sweep_dir == out / "sweeps" / "smoke"
    table = pd.read_parquet(sweep_dir / "trials.parquet")
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    assert yaml.safe_load((sweep_dir / "best.yaml").read_text())["chosen"] in set(table["trial"])
