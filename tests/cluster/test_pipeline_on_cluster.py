"""The whole pipeline (profile=quick_test, procedural sample) submitted as a Ray job to a real two-node
cluster exactly as `weldray submit` does: it succeeds, prints its run directory last, records every stage
in pipeline.json, and its tasks ran on both nodes. Every stage loads its models inside the job (the OCR,
the text segmenter shipped in the package, the ImageNet backbone, the checkpoint, ONNX Runtime), so a
file that does not travel with the job fails here: this runs in `make test` (about 3 minutes), because a
job whose working_dir lost the segmenter's weights once passed every other test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import PIPELINE_OVERRIDES as OVERRIDES
from weldray.cluster import jobs
from weldray.cluster.local import LocalCluster

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def test_pipeline_job_on_two_nodes(pipeline_cluster: LocalCluster, tmp_path: Path) -> None:
    client = pipeline_cluster.job_client()
    out = tmp_path / "outputs"
    submission_id = jobs.submit_pipeline(client, None, [*OVERRIDES, f"output_dir={out}"])
    result = jobs.wait(client, submission_id, timeout_s=1500, poll_s=5)
    (tmp_path / "job.log").write_text(result.logs)
    assert result.status == "SUCCEEDED", result.logs[-4000:]

    info = client.get_job_info(submission_id)
    run_id = info.metadata["run_id"]
    run_dir = Path(result.last_line)
    assert run_dir == out / "pipelines" / run_id, "the run folder carries the job's run id"
    record = json.loads((run_dir / "pipeline.json").read_text())
    stages = record["stages"]
    assert list(stages) == ["clean", "ingest", "generate", "pretrain", "sweep", "train", "evaluate", "export"]
    assert stages.pop("generate")["status"] == "skipped"  # training.mix_real_ratio=1.0: real photos only
    assert stages.pop("pretrain")["status"] == "skipped"  # pipeline.pretrain=false (the default)
    assert stages.pop("sweep")["status"] == "skipped"  # not in pipeline.stages (the default)
    assert all(s["status"] == "done" for s in stages.values()), {k: s["status"] for k, s in stages.items()}
    for stage in stages.values():
        for path in stage["outputs"].values():
            if isinstance(path, str) and path.startswith("/"):
                assert Path(path).exists(), path
    assert info.metadata["config_hash"]

    nodes = {n["node_id"] for n in pipeline_cluster.list_nodes() if n["state"] == "ALIVE"}
    used = {t["node_id"] for t in pipeline_cluster.list_tasks(result.job_id) if t.get("node_id")}
    assert used == nodes, "the pipeline's tasks/actors should run on both nodes"


def test_a_deterministic_error_fails_the_job_once_and_fast(pipeline_cluster: LocalCluster, tmp_path: Path) -> None:
    """Missing weights: the job fails on its driver before any stage or Train worker runs, with the one
    message, instead of Ray Train retrying it on every worker (``FailureConfig``)."""
    client = pipeline_cluster.job_client()
    missing = "/nonexistent/backbone.pt"
    submission_id = jobs.submit_pipeline(
        client, None, [*OVERRIDES, f"model.weights={missing}", f"output_dir={tmp_path / 'outputs'}"]
    )
    t0 = time.monotonic()
    result = jobs.wait(client, submission_id, timeout_s=300, poll_s=1)
    assert result.status == "FAILED", result.logs[-3000:]
    assert time.monotonic() - t0 < 90, "a preflight error must not wait for workers"
    assert result.logs.count(f"model.weights={missing}: no such file") == 1, result.logs[-3000:]
    assert "RayTrainWorker" not in result.logs and "Traceback" not in result.logs
    assert "▶ clean" not in result.logs, "no stage may start before the preflight passes"
