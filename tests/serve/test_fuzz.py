"""Fuzzing the real Serve app over HTTP: schemathesis drives every route of the app's own OpenAPI spec with generated
requests, and hypothesis sends random multipart forms to the upload routes. 0 5xx answers, 0 non-JSON errors.

Budgets: a few seconds' worth in the default suite, more under `slow` (WELDRAY_FUZZ_EXAMPLES overrides both)."""

from __future__ import annotations

import io
import os

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.ray

PER_ROUTE_FAST, PER_ROUTE_SLOW = 10, 300
FORMS_FAST, FORMS_SLOW = 40, 1000


def _budget(default: int) -> int:
    return int(os.environ.get("WELDRAY_FUZZ_EXAMPLES", default))


def _settings(examples: int):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples, deadline=None, database=None, derandomize=examples <= FORMS_FAST,
                    suppress_health_check=list(HealthCheck))


def _assert_not_a_server_error(resp: httpx.Response | object, where: str) -> None:
    status = resp.status_code
    assert status < 500, f"{where}: {status} {resp.text[:300]}"
    if status >= 400 and status != 404 and status != 405 and status != 422:
        # The app's own errors are {"error", "reason"}; FastAPI's routing (404/405) and validation (422) are JSON too.
        assert resp.json()["error"], f"{where}: {status} {resp.text[:300]}"


@pytest.mark.parametrize(
    "per_route", [PER_ROUTE_FAST, pytest.param(PER_ROUTE_SLOW, marks=pytest.mark.slow)], ids=["fast", "slow"]
)
def test_schemathesis_every_route_of_the_openapi_spec(server: str, per_route: int) -> None:
    """Every operation of /openapi.json with generated (valid and invalid) parameters and bodies."""
    import schemathesis
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    per_route = _budget(per_route)
    counts: dict[str, dict[int, int]] = {}

    def fuzz(operation, seen: dict[int, int]):
        @_settings(per_route)
        @given(case=operation.as_strategy())
        def run(case) -> None:
            resp = case.call(base_url=server, timeout=10)
            seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
            _assert_not_a_server_error(resp, operation.label)

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz(operation, counts.setdefault(f"{operation.method.upper()} {operation.path}", {}))()
    print(f"schemathesis: {sum(sum(c.values()) for c in counts.values())} cases, 0 5xx; by route: {counts}")
    assert {"POST /predict", "POST /predict/batch", "GET /healthz", "GET /metadata"} <= set(counts), counts
    assert all(sum(c.values()) >= 1 for c in counts.values()), counts
    with httpx.Client(base_url=server, timeout=10) as c:
        assert c.get("/healthz").status_code == 200


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 24, 3), dtype=np.uint8), "RGB").save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "forms", [FORMS_FAST, pytest.param(FORMS_SLOW, marks=pytest.mark.slow)], ids=["fast", "slow"]
)
def test_random_multipart_forms_get_200_or_4xx(server: str, forms: int) -> None:
    """Random forms (0-6 parts; random field names, filenames in any bytes, content types, images or garbage,
    boundaries, and now and then a cut or a stray byte in the framing) to /predict and /predict/batch."""
    from hypothesis import given
    from hypothesis import strategies as st

    images = [_image(f) for f in ("PNG", "JPEG", "WEBP")]
    content = st.one_of(st.sampled_from(images), st.binary(max_size=512),
                        st.sampled_from(images).map(lambda b: b[: len(b) // 2]))
    part = st.tuples(
        st.binary(min_size=0, max_size=12).filter(lambda b: b'"' not in b and b"\r" not in b and b"\n" not in b),
        st.one_of(st.none(), st.binary(max_size=16).filter(lambda b: b'"' not in b and b"\r" not in b
                                                           and b"\n" not in b)),
        st.sampled_from([b"image/png", b"image/jpeg", b"application/octet-stream", b"text/plain", b"", b"\xff/\xfe"]),
        content,
    )
    boundary = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40)
    seen: dict[int, int] = {}

    def form(parts, b: str) -> bytes:
        out = b""
        for name, filename, ctype, data in parts:
            disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not
                                                                None else b"")
            out += b"--" + b.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\nContent-Type: " + ctype
            out += b"\r\n\r\n" + data + b"\r\n"
        return out + b"--" + b.encode() + b"--\r\n"

    with httpx.Client(base_url=server, timeout=10) as client:

        @_settings(_budget(forms))
        @given(st.lists(part, max_size=6), boundary, st.sampled_from(["/predict", "/predict/batch"]),
               st.one_of(st.none(), st.integers(0, 4000)), st.binary(max_size=4))
        def run(parts, b: str, route: str, cut: int | None, stray: bytes) -> None:
            body = form(parts, b)
            if cut is not None:  # damage the framing: cut it short and/or insert stray bytes there
                body = body[:cut] + stray + body[cut + len(stray):]
            resp = client.post(route, content=body, headers={"content-type": f"multipart/form-data; boundary={b}"})
            seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
            _assert_not_a_server_error(resp, f"{route} {body[:120]!r}")

        run()
        assert client.get("/healthz").status_code == 200
    print(f"multipart fuzz: {sum(seen.values())} forms, status counts {seen}")
    assert sum(seen.values()) >= _budget(forms) and 200 in seen and 400 in seen, seen
