"""A real two-node Ray cluster on this machine: a head and a worker started with ``ray start``.

Both nodes run in token-auth mode with a token kept in the cluster folder (never in ``~/.ray``, so
nobody else's Ray is affected), on a block of 100 non-default ports and with a private
``--temp-dir``. Each node is one ``ray start --block`` process in its own session; stopping sends it
SIGTERM (Ray then stops that node's GCS/raylet/dashboard/workers) and SIGKILLs whatever of its own
process tree is still alive after a grace period. Bare ``ray stop`` is never used: it kills every
Ray process of this user on the machine, including other people's local instances.

The cluster's state (PIDs, ports, token path) lives in ``<temp_dir>/cluster.json`` so that
``weldray cluster down`` in another shell stops exactly what ``weldray cluster up`` started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from weldray.cluster.auth import MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, auth_headers, write_new_token

log = logging.getLogger(__name__)

DEFAULT_TEMP_DIR = Path("/tmp/weldray-cluster")
DEFAULT_PORT_BASE = 26400
PORT_BLOCK = 100
STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"


class ClusterError(RuntimeError):
    """The local cluster could not be started/reached; the message names the cause and the log file."""


@dataclass(frozen=True)
class NodeSpec:
    """One ``ray start`` node: its CPUs, custom resources and labels."""

    name: str
    num_cpus: int = 1
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_cpus < 0:
            raise ValueError(f"NodeSpec {self.name!r}: num_cpus must be >= 0, got {self.num_cpus}")


def _default_nodes() -> tuple[NodeSpec, ...]:
    return (
        # 2 logical CPUs on the head: a 1-CPU Ray Data read task must still fit beside the half-CPU
        # cleaning actors (with 1 + 1, the two free halves sit on different nodes and nothing reads).
        NodeSpec("head", 2, {"head_node": 1}, {"weldray/role": "head"}),
        NodeSpec("worker", 1, {"worker_node": 1}, {"weldray/role": "worker"}),
    )


@dataclass(frozen=True)
class LocalClusterConfig:
    """Where and how big: ports ``port_base .. port_base+99``, a ``--temp-dir`` per node in ``temp_dir``."""

    temp_dir: Path = DEFAULT_TEMP_DIR
    port_base: int = DEFAULT_PORT_BASE
    nodes: tuple[NodeSpec, ...] = field(default_factory=_default_nodes)
    object_store_mb: int = 256
    start_timeout_s: float = 120.0
    # `ray start --block` drains its node for up to 30 s on SIGTERM before stopping its processes.
    stop_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1024 <= self.port_base <= 65535 - PORT_BLOCK:
            raise ValueError(f"port_base must be in 1024..{65535 - PORT_BLOCK}, got {self.port_base}")
        if not 1 <= len(self.nodes) <= 2:
            raise ValueError(f"a local cluster has a head and at most one worker node, got {len(self.nodes)}")
        # Unix socket paths under the temp dir are limited to 107 bytes.
        if len(str(self.temp_dir)) > 40:
            raise ValueError(f"temp_dir path too long for Ray's unix sockets (max 40 chars): {self.temp_dir}")

    @property
    def gcs_port(self) -> int:
        return self.port_base

    @property
    def dashboard_port(self) -> int:
        return self.port_base + 1

    @property
    def dashboard_metrics_port(self) -> int:
        """The dashboard's Prometheus exporter (Ray's default 44227 would collide with any other Ray head here)."""
        return self.port_base + 3

    def node_ports(self, index: int) -> dict[str, int]:
        """``ray start`` port flags for node ``index`` (0 = head); worker processes get 40 ports each."""
        base = self.port_base + 10 + 5 * index
        ports = {
            "dashboard-agent-listen-port": base,
            "dashboard-agent-grpc-port": base + 1,
            "runtime-env-agent-port": base + 2,
            "metrics-export-port": base + 3,
            "node-manager-port": base + 4,
            "object-manager-port": self.port_base + 5 + index,
            "min-worker-port": self.port_base + 20 + 40 * index,
            "max-worker-port": self.port_base + 59 + 40 * index,
        }
        if index == 0:
            ports |= {
                "port": self.gcs_port,
                "dashboard-port": self.dashboard_port,
                "ray-client-server-port": self.port_base + 2,
            }
        return ports


@dataclass
class NodeState:
    name: str
    pid: int
    log_file: str
    temp_dir: str


class LocalCluster:
    """Start/stop a head + worker ``ray start`` cluster; use as a context manager to always stop it.

    >>> with LocalCluster(LocalClusterConfig(temp_dir=Path("/tmp/wr-demo"), port_base=27400)) as cluster:
    ...     client = cluster.job_client()
    """

    def __init__(self, config: LocalClusterConfig | None = None) -> None:
        self.config = config or LocalClusterConfig()
        self.nodes: list[NodeState] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # ----- addresses and credentials -------------------------------------------------------------
    @property
    def dashboard_url(self) -> str:
        """The dashboard / Jobs API address (what ``--address`` of ``ray job submit`` takes)."""
        return f"http://127.0.0.1:{self.config.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        """The address other nodes and drivers join (``ray start --address`` / ``ray.init(address=)``)."""
        return f"127.0.0.1:{self.config.gcs_port}"

    @property
    def token_path(self) -> Path:
        return Path(self.config.temp_dir) / TOKEN_FILE

    def headers(self) -> dict[str, str]:
        return auth_headers(self.token_path.read_text().strip())

    def env(self) -> dict[str, str]:
        """Environment for ``ray start`` and this cluster's clients: token mode, our token file, our venv,
        and this cluster's address as ``RAY_ADDRESS``. Every worker inherits it from its node, so Ray's
        helpers that find "the" cluster by auto-detection (Ray Train's placement-group cleaner, the state
        API) reach this one even while another Ray instance runs on the machine."""
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        venv_bin = str(Path(sys.executable).parent)
        env |= {
            "RAY_ADDRESS": self.gcs_address,
            MODE_ENV: "token",
            TOKEN_PATH_ENV: str(self.token_path),
            # `python` in a job entrypoint must be this environment's interpreter.
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Read by the head's dashboard (`ray start` has no flag for it).
            "DASHBOARD_METRIC_PORT": str(self.config.dashboard_metrics_port),
            # Ray gives the dashboard 60 s to come up, which a loaded 2-core machine can exceed: `ray start`
            # then fails. The cluster's own start timeout is the limit instead.
            "RAY_DASHBOARD_STARTUP_TIMEOUT_S": str(int(self.config.start_timeout_s)),
        }
        return env

    def job_client(self) -> Any:
        """A ``JobSubmissionClient`` that sends this cluster's token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.headers())

    # ----- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Start the head, wait for its Jobs API, start the worker, wait until every node is alive."""
        cfg = self.config
        state = load_state(cfg.temp_dir)
        if state is not None and any(_alive(n) for n in state.nodes):
            raise ClusterError(
                f"a weldray local cluster is already running from {cfg.temp_dir} "
                f"(dashboard {state.dashboard_url}); stop it with `weldray cluster down`"
            )
        _check_ports_free(cfg.port_base, cfg.port_base + PORT_BLOCK)
        Path(cfg.temp_dir).mkdir(parents=True, exist_ok=True)
        if not self.token_path.is_file():
            write_new_token(self.token_path)
        try:
            deadline = time.monotonic() + cfg.start_timeout_s
            for index, spec in enumerate(cfg.nodes):
                self._spawn(index, spec)
                if index == 0:
                    self._wait_for_dashboard(deadline)
            self._wait_for_nodes(len(cfg.nodes), deadline)
        except BaseException:
            self.stop()
            raise
        log.info("local Ray cluster up: dashboard %s, %d nodes", self.dashboard_url, len(self.nodes))
        return self

    def stop(self) -> None:
        """Stop every node this cluster started (by PID), even half-started ones; idempotent."""
        if not self.nodes:
            state = load_state(self.config.temp_dir)
            self.nodes = state.nodes if state else []
        stop_nodes(self.nodes, timeout_s=self.config.stop_timeout_s)
        for proc in self._procs.values():
            proc.poll()  # reap our direct children
        self.nodes, self._procs = [], {}
        (Path(self.config.temp_dir) / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----- logs ----------------------------------------------------------------------------------
    def log_dirs(self) -> dict[str, Path]:
        """Each node's Ray log folder (raylet, gcs, worker-*.out/err, job-driver-*.log on the head)."""
        return {n.name: Path(n.temp_dir) / "session_latest" / "logs" for n in self.nodes}

    # ----- internals -----------------------------------------------------------------------------
    def _spawn(self, index: int, spec: NodeSpec) -> None:
        cfg = self.config
        node_dir = Path(cfg.temp_dir) / spec.name
        node_dir.mkdir(parents=True, exist_ok=True)
        log_file = Path(cfg.temp_dir) / f"{spec.name}.log"
        args = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--temp-dir={node_dir}",
            f"--num-cpus={spec.num_cpus}",
            f"--object-store-memory={cfg.object_store_mb * 1024 * 1024}",
        ]
        if index == 0:
            args += ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
        else:
            args += [f"--address={self.gcs_address}"]
        args += [f"--{flag}={port}" for flag, port in cfg.node_ports(index).items()]
        if spec.resources:
            args.append(f"--resources={json.dumps(spec.resources)}")
        if spec.labels:
            args.append("--labels=" + ",".join(f"{k}={v}" for k, v in spec.labels.items()))
        with open(log_file, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
                cwd=cfg.temp_dir,
            )
        node = NodeState(spec.name, proc.pid, str(log_file), str(node_dir))
        self.nodes.append(node)
        self._procs[spec.name] = proc
        self._save_state()
        # /proc/PID/cmdline shows ours only once exec has finished; stop() relies on it.
        for _ in range(100):
            if _own_process(node) is not None or proc.poll() is not None:
                break
            time.sleep(0.05)

    def _save_state(self) -> None:
        state = ClusterState(self.dashboard_url, self.gcs_address, str(self.token_path), self.nodes)
        path = Path(self.config.temp_dir) / STATE_FILE
        path.write_text(json.dumps(asdict(state), indent=2))

    def _check_alive(self) -> None:
        for node in self.nodes:
            if self._procs[node.name].poll() is not None:
                raise ClusterError(
                    f"`ray start` for the {node.name} node exited; see {node.log_file}:\n"
                    + _tail(Path(node.log_file))
                )

    def _wait_for_dashboard(self, deadline: float) -> None:
        import requests

        while True:
            self._check_alive()
            try:
                if requests.get(f"{self.dashboard_url}/api/version", headers=self.headers(), timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"dashboard {self.dashboard_url} did not answer within "
                    f"{self.config.start_timeout_s:.0f} s; see {self.nodes[0].log_file}"
                )
            time.sleep(1)

    def _wait_for_nodes(self, expected: int, deadline: float) -> None:
        from ray.util.state.exception import ServerUnavailable

        while True:
            self._check_alive()
            try:
                alive = [n for n in self.list_nodes() if n["state"] == "ALIVE"]
            except ServerUnavailable:  # the dashboard answers before its state API module (a subprocess) does
                alive = []
            if len(alive) >= expected:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"only {len(alive)}/{expected} nodes alive after "
                    f"{self.config.start_timeout_s:.0f} s; see {self.nodes[-1].log_file}"
                )
            time.sleep(1)

    def list_nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes from the state API: node_id, state, labels, resources_total, is_head_node."""
        from ray.util.state.common import ListApiOptions, StateResource

        return self._state_list(StateResource.NODES, ListApiOptions(detail=True))

    def list_tasks(self, job_id: str) -> list[dict[str, Any]]:
        """Task records of one Ray job (hex job id) from the state API: name, node_id, state, ..."""
        from ray.util.state.common import ListApiOptions, StateResource

        return self._state_list(
            # Every task: the state API's default limit (100) cuts a pipeline job's list short.
            StateResource.TASKS, ListApiOptions(filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
        )

    def list_actors(self, job_id: str) -> list[dict[str, Any]]:
        """Actor records of one Ray job (hex job id): class_name, node_id, state, pid, ..."""
        from ray.util.state.common import ListApiOptions, StateResource

        return self._state_list(
            StateResource.ACTORS, ListApiOptions(filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
        )

    def kill_node(self, name: str) -> None:
        """SIGKILL node ``name``'s whole process tree (raylet, its workers, ``ray start``), as when a machine is
        lost: nothing drains or says goodbye; the head learns of it from missed health checks."""
        import psutil

        node = next(n for n in self.nodes if n.name == name)
        tree = _process_tree(node)
        if not tree:
            raise ClusterError(f"the {name} node (pid {node.pid}) is not running")
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(tree, timeout=10)
        self._procs[name].poll()  # reap our direct child

    def _state_list(self, resource: Any, options: Any) -> list[dict[str, Any]]:
        from ray.util.state.api import StateApiClient

        client = StateApiClient(address=self.dashboard_url, headers=self.headers())
        rows = client.list(resource, options=options, raise_on_missing_output=False)
        return [row if isinstance(row, dict) else asdict(row) for row in rows]


@dataclass
class ClusterState:
    dashboard_url: str
    gcs_address: str
    token_path: str
    nodes: list[NodeState]


def load_state(temp_dir: Path) -> ClusterState | None:
    """The state ``weldray cluster up`` left in ``temp_dir``, or None."""
    path = Path(temp_dir) / STATE_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return ClusterState(
        raw["dashboard_url"], raw["gcs_address"], raw["token_path"], [NodeState(**n) for n in raw["nodes"]]
    )


def stop_nodes(nodes: list[NodeState], *, timeout_s: float = 30.0) -> None:
    """SIGTERM each node's ``ray start --block`` process, then SIGKILL its leftover process tree."""
    import psutil

    tree: list[psutil.Process] = []
    for node in nodes:
        procs = _process_tree(node)
        tree += procs
        with contextlib.suppress(psutil.NoSuchProcess):
            if procs:
                procs[0].send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout_s)
    for proc in alive:
        log.warning("node process %s (pid %d) ignored SIGTERM; killing it", proc.name(), proc.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


def _own_process(node: NodeState) -> Any:
    """The node's ``ray start`` process if that PID is still ours (PIDs get reused), else None."""
    import psutil

    try:
        proc = psutil.Process(node.pid)
        return proc if f"--temp-dir={node.temp_dir}" in proc.cmdline() else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _process_tree(node: NodeState) -> list[Any]:
    """The node's ``ray start`` process, then every process under it; empty when it is not (or no longer) ours."""
    import psutil

    proc = _own_process(node)
    try:
        return [] if proc is None else [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(node: NodeState) -> bool:
    proc = _own_process(node)
    try:
        return proc is not None and proc.status() != "zombie"
    except Exception:
        return False


def _check_ports_free(first: int, last: int) -> None:
    """Fail fast, naming the port, when any port of our block is taken (e.g. by another cluster)."""
    for port in range(first, last):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Like Ray's own servers: sockets in TIME_WAIT from a cluster just stopped do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                raise ClusterError(
                    f"port {port} is in use; the local cluster needs ports {first}-{last - 1}: "
                    "pick another --port-base"
                ) from None


def find_free_port_base(start: int = 27000, stop: int = 60000) -> int:
    """The first block of 100 free ports at or after ``start`` (tests use it to avoid collisions)."""
    for base in range(start, stop, PORT_BLOCK):
        try:
            _check_ports_free(base, base + PORT_BLOCK)
        except ClusterError:
            continue
        return base
    raise ClusterError(f"no free block of {PORT_BLOCK} ports between {start} and {stop}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
