"""Running weldray on Ray clusters: token auth, Jobs API submission, and a real two-node local cluster."""

from weldray.cluster.auth import TokenNotFoundError, auth_headers, load_token
from weldray.cluster.jobs import JobResult, connect, runtime_env, submit, submit_pipeline, wait
from weldray.cluster.local import ClusterError, LocalCluster, LocalClusterConfig, NodeSpec

__all__ = [
    "ClusterError",
    "JobResult",
    "LocalCluster",
    "LocalClusterConfig",
    "NodeSpec",
    "TokenNotFoundError",
    "auth_headers",
    "connect",
    "load_token",
    "runtime_env",
    "submit",
    "submit_pipeline",
    "wait",
]
