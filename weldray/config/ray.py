"""How weldray connects to Ray (``ray.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from weldray.config._base import ConfigError, check_positive


@dataclass
class RayConfig:
    # None: $RAY_ADDRESS if set (inside `ray job submit`), else a fresh local instance.
    address: Optional[str] = None
    # CPUs for a local instance; None -> all cores.
    num_cpus: Optional[int] = None
    # The dashboard also serves the state API that Ray Train's placement-group cleaner polls to see
    # whether the controller lives. Without one of its own, every run logs a failed query every
    # 2 s, and the query falls through to any other instance's dashboard on 127.0.0.1:8265, which
    # answers "not alive": the cleaner then removes the running training's placement group.
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    # Local instances only: token auth off unless asked for (clusters keep Ray's default token mode).
    local_auth_mode: str = "disabled"
    # Where Ray Train/Tune write checkpoints and results: a local folder or s3://bucket/prefix.
    storage_path: str = "outputs/ray_results"

    def __post_init__(self) -> None:
        if self.num_cpus is not None:
            check_positive("ray.num_cpus", self.num_cpus)
        if self.local_auth_mode not in ("disabled", "token"):
            raise ConfigError("ray.local_auth_mode", f"must be 'disabled' or 'token', got {self.local_auth_mode!r}")
