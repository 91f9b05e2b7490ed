"""A real two-node Ray cluster (head + worker, `ray start`, token auth) on free ports of this machine."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from weldray.cluster.local import LocalCluster, LocalClusterConfig, find_free_port_base


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[LocalCluster]:
    """Started once per module; both nodes are stopped by PID at the end, even if a test failed."""
    temp_dir = Path(tempfile.mkdtemp(prefix="wrc-", dir="/tmp"))  # short: Ray's unix sockets live under it
    cluster = LocalCluster(
        LocalClusterConfig(temp_dir=temp_dir, port_base=find_free_port_base(27000), start_timeout_s=240)
    )
    with cluster:
        trees = [psutil.Process(n.pid) for n in cluster.nodes]
        yield cluster
        trees += [c for t in trees for c in t.children(recursive=True)]
    left = [f"{p.pid}:{p.name()}" for p in trees if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left after stopping the cluster: {left}"
    assert not (temp_dir / "cluster.json").exists()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pipeline_cluster() -> Iterator[LocalCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="wrc-", dir="/tmp"))
    with LocalCluster(
        LocalClusterConfig(
            temp_dir=temp_dir,
            port_base=find_free_port_base(27200),
            object_store_mb=512,
            start_timeout_s=240,
        )
    ) as cluster:
        yield cluster
    shutil.rmtree(temp_dir, ignore_errors=True)
