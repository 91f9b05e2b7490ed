"""Load and faults against a local Serve app on 127.0.0.1: sustained load with no fault (2,000 requests at concurrency
32, the replicas' memory before and after), then a replica SIGKILLed, a replica `ray.kill`ed, and SIGTERM of
`weldray serve`, each during a bounded run of /predict requests at a fixed concurrency.

    .venv/bin/python benchmarks/chaos_serve.py [--model M.onnx] [--requests 300] [--concurrency 16]
        [--sustained 2000 --sustained-concurrency 32] [--scenarios sustained,sigkill,ray_kill,sigterm]
        [serve.key=value ...]

Without --model, a random-weight efficientnet_lite0@224 is exported to a temp folder (as benchmarks/serve_load.py
does); requests are real weld photos when available. For each scenario it prints requests sent / ok / refused (a
503 `overloaded` with Retry-After; during a shutdown HAProxy's own 404 once the app is deleted, or a connection
refused: nothing was accepted) / failed (any other error: a 5xx, a reset, a connection closed without an answer) /
hung (no answer within the client's 10 s) and how many failures were sent after the fault (not in flight when it
struck), p50/p99 of the answered requests, and recovery: seconds from the fault to the end of the last failed
request ("service back"; 0 when none failed) and until the deployment runs as many replicas as before ("full
capacity"). Every run is bounded in count and time and sends traffic to 127.0.0.1 only. tests/serve/test_chaos.py
asserts on the same scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLIENT_TIMEOUT_S = 10.0
RUN_DEADLINE_S = 300.0  # a run stops issuing requests after this, whatever is left
APP = "chaos"


@dataclass
class Outcome:
    started: float
    seconds: float
    kind: str  # ok | refused | failed | hung
    detail: str = ""


@dataclass
class Figures:
    scenario: str
    outcomes: list[Outcome]
    fault_at: float | None = None
    full_capacity_s: float | None = None
    notes: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # per replica: before, after (sustained load)

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed_fraction(self) -> float:
        return (self.count("failed") + self.count("hung")) / max(1, self.sent)

    @property
    def service_back_s(self) -> float:
        """Seconds from the fault to the end of the last failed request (0: none failed)."""
        if self.fault_at is None:
            return 0.0
        ends = [o.started + o.seconds - self.fault_at for o in self.outcomes if o.kind in ("failed", "hung")]
        return max([0.0, *ends])

    @property
    def failed_after_fault(self) -> int:
        """Failed or hung requests sent after the fault struck (not in flight at that moment)."""
        if self.fault_at is None:
            return 0
        return sum(o.kind in ("failed", "hung") and o.started > self.fault_at for o in self.outcomes)

    def percentile(self, q: float) -> float:
        answered = [o.seconds * 1000 for o in self.outcomes if o.kind == "ok"]
        return float(np.percentile(answered, q)) if answered else float("nan")

    def failures(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            if o.kind in ("failed", "hung"):
                out[o.detail] = out.get(o.detail, 0) + 1
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(
    url: str,
    payloads: list[bytes],
    concurrency: int,
    total: int,
    fault: Callable[[], Awaitable[None]] | None = None,
    fault_after: int = 0,
) -> tuple[list[Outcome], float | None]:
    """``total`` POST /predict at ``concurrency``; after ``fault_after`` answers, ``fault()`` runs (once) while the
    load goes on. Returns every request's outcome and when the fault struck (perf_counter)."""
    import httpx

    outcomes: list[Outcome] = []
    issued = 0
    fault_at: float | None = None
    fault_task: asyncio.Task | None = None
    deadline = time.perf_counter() + RUN_DEADLINE_S

    async def strike() -> None:
        nonlocal fault_at
        fault_at = time.perf_counter()
        await fault()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued, fault_task
        while issued < total and time.perf_counter() < deadline:
            i = issued
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict", content=payloads[i % len(payloads)])
                if r.status_code == 200:
                    kind, detail = "ok", ""
                elif r.status_code == 503 and r.headers.get("retry-after") and _error(r) == "overloaded":
                    kind, detail = "refused", "503 overloaded"
                elif r.status_code == 404 and r.text.startswith("Path '/predict' not found"):
                    kind, detail = "refused", "404 from HAProxy: the app is gone (shutting down)"
                else:
                    kind, detail = "failed", f"{r.status_code} {_error(r)}"
            except httpx.TimeoutException:
                kind, detail = "hung", "no answer in 10 s"
            except httpx.ConnectError as exc:  # refused before it was accepted: nothing was lost
                kind, detail = "refused", f"connect: {type(exc).__name__}"
            except httpx.HTTPError as exc:
                kind, detail = "failed", type(exc).__name__
            outcomes.append(Outcome(t0, time.perf_counter() - t0, kind, detail))
            if fault is not None and fault_task is None and len(outcomes) >= fault_after:
                fault_task = asyncio.create_task(strike())

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    if fault_task is not None:
        await fault_task
    return outcomes, fault_at


def _error(r) -> str:
    try:
        return str(r.json().get("error", ""))
    except ValueError:
        return r.text[:40].replace("\n", " ")


# --- replicas of an in-process Serve app ------------------------------------------------------------------------
def replicas(app: str = APP) -> list[tuple[str, int]]:
    """(actor name, pid) of every live replica of ``app``."""
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                        limit=10_000, detail=True)
    return [(a.name, a.pid) for a in alive if a.class_name == f"ServeReplica:{app}:WeldService"]


def running_replicas(app: str = APP) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


async def wait_full_capacity(before: set[str], n: int, started: float, app: str = APP, limit_s: float = 120) -> float:
    """Seconds from ``started`` until ``app`` again runs ``n`` replicas, none of them the killed one (from
    ``before``, the names alive before the fault, minus the ones still alive), or nan after ``limit_s``."""
    while time.perf_counter() - started < limit_s:
        alive = await asyncio.to_thread(replicas, app)
        names = {name for name, _ in alive}
        if len(alive) >= n and names != before and await asyncio.to_thread(running_replicas, app) >= n:
            return time.perf_counter() - started
        await asyncio.sleep(0.5)
    return float("nan")


def replica_rss_mb(app: str = APP) -> dict[str, float]:
    """Resident memory (MiB) of every live replica of ``app``, by actor name."""
    import psutil

    return {name: psutil.Process(pid).memory_info().rss / 2**20 for name, pid in replicas(app)}


async def sustained_scenario(
    url: str, payloads: list[bytes], concurrency: int, total: int, app: str = APP
) -> Figures:
    """``total`` requests at ``concurrency``, no fault, after a warm-up of ``2 * concurrency`` (first-use allocations
    are not a leak): each replica's RSS before and after, which a leak per request would grow."""
    await load(url, payloads, concurrency, 2 * concurrency)
    before = await asyncio.to_thread(replica_rss_mb, app)
    figures = Figures(f"sustained load, {len(before)} replica(s)", [])
    figures.outcomes, _ = await load(url, payloads, concurrency, total)
    after = await asyncio.to_thread(replica_rss_mb, app)
    figures.rss_mb = [(before[name], after[name]) for name in sorted(before) if name in after]
    figures.notes.append("replica RSS MiB " + ", ".join(f"{b:.0f} -> {a:.0f}" for b, a in figures.rss_mb))
    if len(figures.rss_mb) != len(before):
        figures.notes.append(f"{len(before) - len(figures.rss_mb)} replica(s) restarted during the run")
    return figures


def start_app(model: Path | str, overrides: list[str]) -> str:
    """Ray (if not started) + Serve on a free port + the weldray app named APP; returns its URL."""
    from ray import serve

    from weldray.config import RayConfig, load_config
    from weldray.inference.serving import build_application
    from weldray.ray_utils import init_ray

    cfg = load_config(overrides).serve
    init_ray(RayConfig(num_cpus=2), serve=cfg)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(model, cfg), name=APP, route_prefix="/")
    return f"http://127.0.0.1:{port}"


async def kill_replica_scenario(
    url: str, payloads: list[bytes], how: str, concurrency: int, total: int, app: str = APP
) -> Figures:
    """``how`` = sigkill (SIGKILL of one replica's process) or ray_kill (``ray.kill`` of its actor), a third of the
    way into the run."""
    import ray

    before = await asyncio.to_thread(replicas, app)
    n = len(before)
    figures = Figures(f"{how} of 1 of {n} replica(s)", [])

    async def fault() -> None:
        name, pid = before[0]
        if how == "sigkill":
            os.kill(pid, signal.SIGKILL)
        else:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        figures.full_capacity_s = await wait_full_capacity({b[0] for b in before}, n, time.perf_counter(), app)

    figures.outcomes, figures.fault_at = await load(url, payloads, concurrency, total, fault, total // 3)
    return figures


# --- SIGTERM of `weldray serve` -------------------------------------------------------------------------------
def start_cli(model: Path | str, overrides: list[str], log: Path, ready_s: float = 240) -> tuple[subprocess.Popen, str]:
    """`weldray serve MODEL` in its own session on a free port, once /readyz answers."""
    import httpx

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "weldray"), "serve", str(model), "--port", str(port),
           "ray.include_dashboard=false", *overrides]
    # A private Ray of its own, with its own HAProxy ports: not the ones a Ray started by this process put in its
    # environment (weldray.ray_utils.serve_environment), which that HAProxy may still hold.
    inherited = ("RAY_SERVE_HAPROXY_", "RAY_SERVE_FALLBACK_PROXY_", "RAY_SERVE_DIRECT_INGRESS_", "WELDRAY_HAPROXY_")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(inherited)}, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weldray serve exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        time.sleep(1)
    stop_cli(proc)
    raise RuntimeError(f"weldray serve not ready after {ready_s} s:\n{log.read_text()[-2000:]}")


def stop_cli(proc: subprocess.Popen) -> None:
    """Kill what is left of a `weldray serve` (its own session only)."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def sigterm_scenario(
    proc: subprocess.Popen, url: str, payloads: list[bytes], concurrency: int, total: int
) -> Figures:
    """SIGTERM to `weldray serve` a third of the way into the run; the load goes on until ``total`` were sent
    (requests after the shutdown are refused at connect: clean, nothing accepted was lost)."""
    figures = Figures("SIGTERM of weldray serve", [])

    async def fault() -> None:
        proc.send_signal(signal.SIGTERM)
        started = time.perf_counter()
        code = await asyncio.to_thread(proc.wait, 120)
        figures.notes.append(f"exit {code} after {time.perf_counter() - started:.1f} s")

    figures.outcomes, figures.fault_at = await load(url, payloads, concurrency, total, fault, total // 3)
    return figures


def table(rows: list[Figures], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("scenario", "sent", "ok", "refused", "failed", "hung", "failed %", "of them sent after", "p50 ms",
                "p99 ms", "service back s", "full capacity s", "failures / notes"):
        t.add_column(col)
    for f in rows:
        t.add_row(f.scenario, str(f.sent), str(f.count("ok")), str(f.count("refused")), str(f.count("failed")),
                  str(f.count("hung")), f"{100 * f.failed_fraction:.2f}", str(f.failed_after_fault),
                  f"{f.percentile(50):.0f}",
                  f"{f.percentile(99):.0f}", f"{f.service_back_s:.1f}",
                  "" if f.full_capacity_s is None else f"{f.full_capacity_s:.1f}",
                  "; ".join([*(f"{k} x{v}" for k, v in f.failures().items()), *f.notes]))
    return t


def main() -> None:
    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import _model, _payloads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=300, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sustained", type=int, default=2000, help="requests of the sustained scenario")
    parser.add_argument("--sustained-concurrency", type=int, default=32)
    parser.add_argument("--scenarios", default="sustained,sigkill,ray_kill,sigterm")
    parser.add_argument("overrides", nargs="*", help="serve.* overrides for the Serve app")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    payloads = _payloads(32)
    rows: list[Figures] = []
    load_avg = [float(Path("/proc/loadavg").read_text().split()[0])]
    console = Console(width=220)

    def done(figures: Figures) -> None:
        rows.append(figures)
        load_avg.append(float(Path("/proc/loadavg").read_text().split()[0]))
        console.print(table([figures], f"{figures.scenario} (load avg now {load_avg[-1]:.1f})"))

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _model(Path(tmp))
        in_process = [s for s in scenarios if s in ("sustained", "sigkill", "ray_kill")]
        if in_process:
            import ray
            from ray import serve

            try:
                url = start_app(model, args.overrides)
                if "sustained" in in_process:
                    done(asyncio.run(sustained_scenario(url, payloads, args.sustained_concurrency, args.sustained)))
                for how in (s for s in in_process if s != "sustained"):
                    done(asyncio.run(kill_replica_scenario(url, payloads, how, args.concurrency, args.requests)))
            finally:
                serve.shutdown()
                ray.shutdown()
        if "sigterm" in scenarios:
            proc, url = start_cli(model, args.overrides, Path(tmp) / "serve.log")
            try:
                done(asyncio.run(sigterm_scenario(proc, url, payloads, args.concurrency, args.requests)))
            finally:
                stop_cli(proc)
    console.print(table(rows, f"Load and faults: faults at concurrency {args.concurrency}, {args.requests} requests "
                              f"per fault scenario, overrides {args.overrides or 'none'}, load avg "
                              f"{min(load_avg):.1f}-{max(load_avg):.1f}"))


if __name__ == "__main__":
    main()
