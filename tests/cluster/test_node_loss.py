"""A worker node lost mid-stage (SIGKILL of its whole process tree while Ray Train workers run on it): the
pipeline job submitted to the local two-node cluster either finishes on the head or fails with a clear status,
and submitting the same run again (``pipeline.run_name``) resumes it: no stage that completed is recomputed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import PIPELINE_OVERRIDES
from weldray.cluster import jobs
from weldray.cluster.local import LocalCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(2400)]


def _wait_for_work_on(cluster: LocalCluster, client, submission_id: str, node_id: str) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """Until a stage runs and the job has an actor alive on ``node_id`` (clean's OCR/inpainting actors, train's
    Ray Train workers, ...); returns that stage and those actors' classes."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        info = client.get_job_info(submission_id)
        assert str(info.status.value) in ("PENDING", "RUNNING"), client.get_job_logs(submission_id)[-3000:]
        stages = re.findall(r"▶ (\w+)", client.get_job_logs(submission_id))
        if info.job_id and stages:
            actors = [a["class_name"] for a in cluster.list_actors(info.job_id)
                      if a["state"] == "ALIVE" and a["node_id"] == node_id]
            if actors:
                return stages[-1], actors
        time.sleep(1)
    pytest.fail("no actor of the pipeline job ran on the worker node within 15 minutes")


def test_a_lost_worker_node_and_a_resubmission(pipeline_cluster: LocalCluster, tmp_path: Path) -> None:
    client = pipeline_cluster.job_client()
    run = "node-loss"
    overrides = [*PIPELINE_OVERRIDES, f"output_dir={tmp_path / 'outputs'}", f"pipeline.run_name={run}"]
    first = jobs.submit_pipeline(client, None, overrides)
    worker_id = next(n["node_id"] for n in pipeline_cluster.list_nodes()
                     if n["labels"].get("weldray/role") == "worker" and n["state"] == "ALIVE")
    stage, actors = _wait_for_work_on(pipeline_cluster, client, first, worker_id)
    killed_at = time.monotonic()
    pipeline_cluster.kill_node("worker")

    result = jobs.wait(client, first, timeout_s=1200, poll_s=2)
    (tmp_path / "first.log").write_text(result.logs)
    ended_after = time.monotonic() - killed_at
    run_dir = tmp_path / "outputs" / "pipelines" / run
    before = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    print(f"worker node killed during {stage} ({', '.join(sorted(set(actors)))} on it); the job "
          f"{result.status} {ended_after:.0f} s later; stages {[(k, v['status']) for k, v in before.items()]}")
    if result.status == "SUCCEEDED":  # finished on the head: the stage's actors or workers restarted there
        assert all(s["status"] in ("done", "skipped") for s in before.values()), before
    else:  # a clear status: the stage that failed, why, and how to resume
        assert result.status == "FAILED", result.logs[-3000:]
        assert before[stage]["status"] == "failed"
        assert f"stage '{stage}' failed" in result.logs and f"pipeline.run_name={run}" in result.logs

    # The same run again, on what is left of the cluster (the head): stages done are kept, with their records.
    second = jobs.submit_pipeline(client, None, overrides)
    assert second == f"weldray-{run}-2"
    again = jobs.wait(client, second, timeout_s=1200, poll_s=2)
    (tmp_path / "second.log").write_text(again.logs)
    assert again.status == "SUCCEEDED", again.logs[-4000:]
    after = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    for name, stage in before.items():
        if stage["status"] == "done":
            assert after[name] == stage, f"{name} was recomputed"
            assert f"✓ {name}: up to date" in again.logs
    assert all(s["status"] in ("done", "skipped") for s in after.values()), after
    assert Path(again.last_line) == run_dir
