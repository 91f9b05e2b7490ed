"""init_ray: a private local instance whose workers are not niced below the driver."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.ray


def test_local_workers_run_at_the_drivers_priority(ray_local: None) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    expected = int(os.environ.get("RAY_worker_niceness", os.nice(0)))  # noqa: SIM112 (Ray's own name)
    assert ray.get(niceness.remote()) == expected
