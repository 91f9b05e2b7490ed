"""A small Ray job for the two-node cluster test: one task pinned to each node, by resource and by label.

    python tests/cluster/spread_job.py   (under `ray job submit`; joins $RAY_ADDRESS)

Prints one JSON line: {"job_id", "tasks": {name: node_id}, "nodes": [alive node ids]}.
"""

from __future__ import annotations

import json
import os
import socket

import ray
from ray.util.scheduling_strategies import In, NodeLabelSchedulingStrategy


@ray.remote(num_cpus=1)
def where(name: str) -> dict[str, str]:
    """Report the node this task ran on (the state API records the same node id) and the cluster address
    the task's own Ray helpers would auto-detect."""
    return {
        "name": name,
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "ray_address": os.environ.get("RAY_ADDRESS", ""),
    }


def main() -> None:
    ray.init()  # $RAY_ADDRESS under `ray job submit`
    refs = [
        where.options(name="weldray_spread_head", resources={"head_node": 0.01}).remote("head"),
        where.options(name="weldray_spread_worker", resources={"worker_node": 0.01}).remote("worker"),
        where.options(
            name="weldray_spread_label_worker",
            scheduling_strategy=NodeLabelSchedulingStrategy(hard={"weldray/role": In("worker")}),
        ).remote("label_worker"),
    ]
    results = ray.get(refs)
    tasks = {r["name"]: r["node_id"] for r in results}
    addresses = {r["name"]: r["ray_address"] for r in results}
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    report = {"job_id": ray.get_runtime_context().get_job_id(), "tasks": tasks, "nodes": nodes, "addresses": addresses}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
