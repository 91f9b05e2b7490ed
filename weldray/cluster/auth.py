"""Ray 2.60 token authentication, seen from a client.

Ray clusters started with ``RAY_AUTH_MODE=token`` (the default for new clusters) answer 401 on the
dashboard, the Jobs API and the state API unless a request carries ``Authorization: Bearer <token>``.
Ray's own loader (C++ ``AuthenticationTokenLoader``) looks, in order, at ``$RAY_AUTH_TOKEN``, the
file named by ``$RAY_AUTH_TOKEN_PATH`` and ``~/.ray/auth_token``; :func:`load_token` follows the
same order so ``weldray submit`` works wherever ``ray job submit`` would.

Ray's SDK only attaches the header when the *client* process runs with ``RAY_AUTH_MODE=token``;
weldray passes the header explicitly instead, so a client needs the token but no mode switch.
The token is a secret: nothing here logs or prints it.
"""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
MODE_ENV = "RAY_AUTH_MODE"


class TokenNotFoundError(RuntimeError):
    """No token where Ray would look; the message says where it looked and how to get one."""


def default_token_path() -> Path:
    """Where ``ray get-auth-token --generate`` and a token-mode ``ray start`` keep the token."""
    return Path.home() / ".ray" / "auth_token"


def load_token(token_file: str | Path | None = None) -> str:
    """The token from ``token_file``, else from the places Ray itself reads, in Ray's order."""
    if token_file is not None:
        return _read(Path(token_file), source="--token-file")
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_PATH_ENV):
        return _read(Path(os.environ[TOKEN_PATH_ENV]), source=f"${TOKEN_PATH_ENV}")
    path = default_token_path()
    if path.is_file():
        return _read(path, source="default token file")
    raise TokenNotFoundError(
        f"no Ray auth token: ${TOKEN_ENV} and ${TOKEN_PATH_ENV} are unset and {path} does not exist. "
        "On the head node run `ray get-auth-token` and copy the token into a file readable only by you, "
        f"then pass --token-file FILE or set {TOKEN_PATH_ENV}=FILE."
    )


def auth_headers(token: str) -> dict[str, str]:
    """HTTP headers for the dashboard / Jobs API / state API of a token-mode cluster."""
    return {"Authorization": f"Bearer {token}"}


def write_new_token(path: Path) -> Path:
    """Create a fresh 256-bit token at ``path`` (mode 0600) with Ray's own generator."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_new_authentication_token())
    return path


def _read(path: Path, *, source: str) -> str:
    if not path.is_file():
        raise TokenNotFoundError(f"Ray auth token file from {source} not found: {path}")
    token = path.read_text().strip()
    if not token:
        raise TokenNotFoundError(f"Ray auth token file from {source} is empty: {path}")
    return token
