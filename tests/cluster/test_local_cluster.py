"""A job submitted through the Jobs API with the token runs on BOTH nodes of a real `ray start` cluster;
the dashboard refuses requests without the token; stopping leaves no process behind (checked when
the module's cluster is torn down, see conftest.py).

One module-scoped cluster (~40-70 s to start on 2 shared cores); `make cluster-test` runs this file and
the slow pipeline test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from weldray.cluster import jobs
from weldray.cluster.local import LocalCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

SPREAD_JOB = "python tests/cluster/spread_job.py"


def test_dashboard_requires_the_token(two_node_cluster: LocalCluster) -> None:
    url = f"{two_node_cluster.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code in (401, 403)
    assert requests.get(url, headers=two_node_cluster.headers(), timeout=10).status_code == 200


def test_cluster_has_a_head_and_a_labelled_worker(two_node_cluster: LocalCluster) -> None:
    nodes = [n for n in two_node_cluster.list_nodes() if n["state"] == "ALIVE"]
    roles = sorted(n["labels"].get("weldray/role", "") for n in nodes)
    assert roles == ["head", "worker"]
    cpus = {n["labels"]["weldray/role"]: n["resources_total"].get("CPU") for n in nodes}
    assert cpus == {"head": 2.0, "worker": 1.0}


def test_job_runs_on_both_nodes_and_its_logs_come_back(
    two_node_cluster: LocalCluster, tmp_path: Path
) -> None:
    client = two_node_cluster.job_client()
    submission_id = jobs.submit(
        client,
        SPREAD_JOB,
        metadata={"run_id": "spread-test", "config_hash": "none"},
        required=["tests/cluster/spread_job.py"],
    )
    result = jobs.wait(client, submission_id, timeout_s=300, poll_s=1)
    assert result.status == "SUCCEEDED", result.logs[-3000:]
    assert client.get_job_info(submission_id).metadata["run_id"] == "spread-test"

    report = json.loads(result.last_line)
    node_ids = {n["node_id"] for n in two_node_cluster.list_nodes() if n["state"] == "ALIVE"}
    head_id = next(n["node_id"] for n in two_node_cluster.list_nodes() if n["is_head_node"])
    assert set(report["nodes"]) == node_ids
    assert report["tasks"]["head"] == head_id
    assert (
        report["tasks"]["worker"] != head_id and report["tasks"]["label_worker"] == report["tasks"]["worker"]
    )
    # Workers on both nodes know their cluster: Ray Train's placement-group cleaner and the state API never
    # auto-detect another Ray instance on the machine (two clusters, or a cluster beside a local run).
    assert set(report["addresses"].values()) == {two_node_cluster.gcs_address}

    # The cluster's own task records (state API) agree: this job's tasks ran on both nodes.
    tasks = two_node_cluster.list_tasks(result.job_id)
    ran = {t["name"]: t["node_id"] for t in tasks if t["name"].startswith("weldray_spread_")}
    assert ran == {
        "weldray_spread_head": head_id,
        "weldray_spread_worker": report["tasks"]["worker"],
        "weldray_spread_label_worker": report["tasks"]["worker"],
    }
    assert set(ran.values()) == node_ids

    # Logs: the driver's output through the Jobs API, and each node's Ray log folder on disk.
    (tmp_path / "job.log").write_text(result.logs)
    assert "Running entrypoint for job" in (tmp_path / "job.log").read_text()
    for name, log_dir in two_node_cluster.log_dirs().items():
        assert (log_dir / "raylet.out").is_file(), f"{name}: no raylet log in {log_dir}"
    assert list(two_node_cluster.log_dirs()["head"].glob(f"job-driver-{submission_id}.log"))


def test_submit_with_a_wrong_token_is_refused_without_echoing_it(
    two_node_cluster: LocalCluster, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from weldray.cli import app

    wrong = tmp_path / "token"
    wrong.write_text("not-the-token")
    result = CliRunner().invoke(
        app,
        [
            "submit",
            "--address",
            two_node_cluster.dashboard_url,
            "--token-file",
            str(wrong),
            "profile=quick_test",
        ],
    )
    assert result.exit_code == 1
    assert "cannot reach the Jobs API" in result.output
    assert "not-the-token" not in result.output
    assert two_node_cluster.token_path.read_text() not in result.output
