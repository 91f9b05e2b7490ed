"""What a finished job leaves behind in the session's Ray: live actors of its pools and CPUs not free."""

from __future__ import annotations

import time


def held_after(pool_class: str, timeout_s: float = 10.0, *, cpus_only: bool = False) -> tuple[list[str], float]:
    """(live actors whose class name contains ``pool_class``, CPUs not free) once both are nothing (the CPUs alone
    with ``cpus_only``), or when ``timeout_s`` has passed: Ray's resource view follows an actor's death within a
    second or so."""
    import ray
    from ray.util.state import list_actors

    def held() -> tuple[list[str], float]:
        alive = [] if cpus_only else [
            a.name for a in list_actors(filters=[("state", "!=", "DEAD")]) if pool_class in a.class_name]
        return alive, ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0.0)

    deadline = time.monotonic() + timeout_s
    while (now := held()) != ([], 0.0) and time.monotonic() < deadline:
        time.sleep(0.5)
    return now
