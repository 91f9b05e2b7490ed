"""Load and faults (benchmarks/chaos_serve.py): 2,000 requests at concurrency 32 with no fault, a replica SIGKILLed or
`ray.kill`ed at concurrency 16, and SIGTERM of `weldray serve`, each a bounded run of /predict requests on 127.0.0.1.
The issue's targets: under sustained load no error but 503 overload answers and the replicas' memory bounded; failed
<= 0.5 %, none hung (client timeout 10 s), service back and full capacity within 30 s, and on SIGTERM no request
dropped after it was accepted (all asserted)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import chaos_serve
import pytest

from tests.export.models import export_small

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REQUESTS = 400
CONCURRENCY = 16
# The shipped defaults, but on the session's 2-CPU Ray beside other apps: half a CPU per replica, one ORT thread.
SMALL = ["serve.num_cpus_per_replica=0.5", "serve.intra_op_threads=1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, procedural_dir: Path) -> Path:
    return export_small(tmp_path_factory.mktemp("chaos_model"), procedural_dir, n=4).path


@pytest.fixture(scope="module")
def payloads(procedural_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(procedural_dir.rglob("*.jpg"))[:16]]


@pytest.fixture(scope="module")
def app(ray_local: None, model: Path) -> Iterator[str]:
    """The weldray app with its default replica settings, on this module's own Serve instance."""
    from ray import serve

    serve.shutdown()  # this module's Serve: its own port
    url = chaos_serve.start_app(model, SMALL)
    try:
        yield url
    finally:
        serve.shutdown()


def _report(figures: chaos_serve.Figures) -> None:
    from rich.console import Console

    Console(width=220).print(chaos_serve.table([figures], figures.scenario))


# Growth of a replica's RSS over the sustained run beyond which it is a leak, not allocator noise (2026-12-03: +4 and
# +2 MiB here; +17 and +2 MiB with real photos in benchmarks/chaos_serve.py).
RSS_GROWTH_MIB = 64


def test_sustained_load(app: str, payloads: list[bytes]) -> None:
    """2,000 requests at concurrency 32: each answered, or refused with a 503 that says when to retry; the replicas'
    memory does not grow with the requests."""
    figures = asyncio.run(chaos_serve.sustained_scenario(app, payloads, 32, 2000))
    _report(figures)
    assert figures.sent == 2000 and figures.count("failed") == figures.count("hung") == 0, figures.failures()
    assert {o.detail for o in figures.outcomes if o.kind == "refused"} <= {"503 overloaded"}
    assert figures.count("ok") >= 1900, figures.count("ok")
    assert len(figures.rss_mb) == 2, figures.notes
    assert all(after - before < RSS_GROWTH_MIB for before, after in figures.rss_mb), figures.rss_mb


@pytest.mark.parametrize("how", ["sigkill", "ray_kill"])
def test_a_replica_killed_under_load(app: str, payloads: list[bytes], how: str) -> None:
    """With the default two replicas and HAProxy's retries (serve.retries=1, requests held whole by
    weldray-haproxy), the requests in flight on the killed replica are answered by the other one: at most 0.5 %
    fail (the issue's target), none hangs, and Serve restores the second replica within 30 s."""
    figures = asyncio.run(chaos_serve.kill_replica_scenario(app, payloads, how, CONCURRENCY, REQUESTS))
    _report(figures)
    assert figures.sent == REQUESTS and figures.count("hung") == 0, figures.failures()
    # Without the retries: 8 of 400 in both runs of 2026-12-02, all in flight on the dead replica.
    assert figures.failed_fraction <= 0.005, figures.failures()
    assert figures.service_back_s < 5, figures.service_back_s
    assert figures.full_capacity_s is not None and figures.full_capacity_s < 30, figures.full_capacity_s


def test_sigterm_of_weldray_serve_drops_no_accepted_request(model: Path, payloads: list[bytes], tmp_path: Path) -> None:
    proc, url = chaos_serve.start_cli(model, SMALL, tmp_path / "serve.log")
    try:
        figures = asyncio.run(chaos_serve.sigterm_scenario(proc, url, payloads, CONCURRENCY, REQUESTS))
    finally:
        chaos_serve.stop_cli(proc)
    _report(figures)
    assert figures.sent == REQUESTS and figures.count("hung") == 0
    assert figures.count("failed") == 0, figures.failures()  # each got its answer or a refusal at connect
    assert figures.count("ok") >= REQUESTS // 3 and figures.notes[0].startswith("exit 0"), figures.notes
