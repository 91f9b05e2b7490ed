"""Connecting to Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import logging
import os

from weldray.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig, *, job_name: str | None = None) -> None:
    """Join the cluster named by ``ray.address`` / ``$RAY_ADDRESS`` (as under ``ray job submit``),
    else start a private local instance.

    A local instance is started with ``address="local"`` so that a ``ray start`` cluster
    elsewhere on the machine is never joined by accident. Token auth (Ray 2.60 default) is
    switched off for local instances only, per ``ray.local_auth_mode``, and their workers run at
    the driver's priority (``$RAY_worker_niceness`` overrides).
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if job_name:
        kwargs["namespace"] = "weldray"
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
        return
    if cfg.local_auth_mode == "disabled":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray runs its workers at nice 15, so on a private local instance any other busy process
    # starves the job itself (a training test ran at 0.1 img/s beside two CPU-bound processes).
    # Here the job is the user's foreground work: same priority as the driver.
    os.environ.setdefault("RAY_worker_niceness", "0")
    context = ray.init(
        address="local",
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.dashboard_host,
        **kwargs,
    )
    log.info("started local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
    if context.dashboard_url:
        log.info("Ray dashboard: http://%s", context.dashboard_url)
