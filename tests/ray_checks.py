"""What a finished job leaves behind in the session's Ray: live actors of its pools and CPUs not free."""

from __future__ import annotations

import time


def held_after(pool_class: str | None = None, timeout_s: float = 10.0) -> tuple[list[str], float]:
    """(live actors whose class name contains ``pool_class``, CPUs not free) once both are nothing (the CPUs alone
    without ``pool_class``), or when ``timeout_s`` has passed: Ray's resource view follows an actor's death within a
    second or so."""
    import ray
    from ray.util.state import list_actors

    def held() -> tuple[list[str], float]:
        alive = [] if pool_class is None else [
            a.name for a in list_actors(filters=[("state", "!=", "DEAD")]) if pool_class in a.class_name]
        return alive, ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0.0)

    deadline = time.monotonic() + timeout_s
    while (now := held()) != ([], 0.0) and time.monotonic() < deadline:
        time.sleep(0.5)
    return now


def holders() -> str:
    """The live actors that hold resources and the placement groups not removed, for a failure message."""
    from ray.util.state import list_actors, list_placement_groups

    actors = [f"{a.class_name} (pid {a.pid}, {a.required_resources})"
              for a in list_actors(filters=[("state", "!=", "DEAD")], detail=True) if a.required_resources]
    groups = [f"{g.name or g.placement_group_id} {g.bundles}"
              for g in list_placement_groups(filters=[("state", "!=", "REMOVED")], detail=True)]
    return f"actors: {actors}; placement groups: {groups}"
