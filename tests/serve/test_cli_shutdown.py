"""``weldray serve MODEL`` as a user runs it: ready over HTTP, then a signal stops it cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.export.models import export_small

pytestmark = pytest.mark.ray

READY_TIMEOUT_S = 180
EXIT_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_members(sid: int) -> list[str]:
    """'pid name' of every live process in session ``sid`` (the server and everything it started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(f"{stat.parent.name} {name}")
    return found


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, procedural_dir: Path) -> Path:
    return export_small(tmp_path_factory.mktemp("cli_serve"), procedural_dir, n=4).path


def _serve(model: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [
        str(Path(sys.executable).parent / "weldray"),
        "serve",
        str(model),
        "--port",
        str(port),
        "serve.min_replicas=1",
        "serve.max_replicas=1",
        "serve.num_cpus_per_replica=0.5",
        "serve.intra_op_threads=1",
        "ray.include_dashboard=false",
    ]
    env = {**os.environ, "RAY_ADDRESS": ""}  # a private local Ray, never a cluster from the environment
    # Its own session, so everything it starts (GCS, raylet, workers, replicas) can be found afterwards.
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_serve_cli_stops_cleanly_on_signal(model_path: Path, tmp_path: Path, sig: signal.Signals) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    proc = _serve(model_path, port, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"weldray serve exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        assert len(_session_members(proc.pid)) > 3  # Ray's own processes are in the session: the check below bites
        proc.send_signal(sig)
        started = time.monotonic()
        code = proc.wait(timeout=EXIT_TIMEOUT_S)
        took = time.monotonic() - started
        output = log.read_text()
        assert code == 0, f"exit code {code} after {sig.name}:\n{output[-3000:]}"
        assert f"received {sig.name}" in output and "shutting down Serve and Ray" in output
        # Ray's processes get a moment to exit after ray.shutdown() returns.
        deadline = time.monotonic() + 20
        while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes left behind by weldray serve: {left}"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        print(f"{sig.name}: exited 0 in {took:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # only this test's own process group, if anything survived


def test_serve_on_a_port_in_use_says_so_in_one_line(model_path: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "serve.log"
        proc = _serve(model_path, port, log)
        assert proc.wait(timeout=60) == 1
    output = log.read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in output and "--port" in output, output
    assert "Traceback" not in output and "started local Ray" not in output, output  # said before Ray starts
