"""Hostile clients against the real Serve app on 127.0.0.1 (HAProxy ingress): every one gets a 4xx JSON answer or
a closed connection, within a client's 10 s patience, never a 5xx, and /healthz stays OK throughout."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.serve.conftest import BODY_TIMEOUT_S, MAX_BODY

pytestmark = pytest.mark.ray

PATIENCE_S = 10.0  # a client's timeout: no answer by then is a hung connection


@dataclass
class Answer:
    """What a raw client saw: the status (None: the connection closed without one), the JSON body, the bytes of
    the request body it managed to send before the answer came, and when."""

    status: int | None
    body: dict | None
    sent: int
    seconds: float


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _parse(raw: bytes) -> tuple[int | None, dict | None, bool]:
    """(status, JSON body, whether the whole answer is in) of what came back so far."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not raw.startswith(b"HTTP/1.") or not sep:
        return None, None, False
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), None)
    if length is None or len(body) < length:
        return status, None, False
    try:
        return status, json.loads(body[:length]), True
    except ValueError:
        return status, None, True


def _read_answer(sock: socket.socket) -> tuple[int | None, dict | None]:
    raw = b""
    while not (answer := _parse(raw))[2] and (chunk := sock.recv(65536)):
        raw += chunk
    assert answer[0] is None or answer[0] < 500, raw[:300]
    return answer[0], answer[1]


async def _send(
    url: str, head: bytes, body_size: int = 0, *, pace_s: float = 0.0, chunk: int = 65536, stop_after: int | None = None
) -> Answer:
    """Send ``head`` (request line + headers) and up to ``body_size`` body bytes (``chunk`` at a time, ``pace_s``
    apart, stopping after ``stop_after`` bytes), while reading: stops sending as soon as an answer (or EOF) arrives."""
    host, port = _split(url)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    sent = 0
    received = bytearray()

    async def read() -> None:
        while not _parse(bytes(received))[2] and (data := await reader.read(65536)):
            received.extend(data)

    async def write() -> None:
        nonlocal sent
        writer.write(head)
        await writer.drain()
        limit = body_size if stop_after is None else min(body_size, stop_after)
        while sent < limit:
            n = min(chunk, limit - sent)
            writer.write(b"\0" * n)
            await writer.drain()
            sent += n
            if pace_s:
                await asyncio.sleep(pace_s)
        await asyncio.sleep(3600)  # the body (or what we chose to send of it) is out: wait for the answer

    reading, writing = asyncio.create_task(read()), asyncio.create_task(write())
    try:
        await asyncio.wait_for(asyncio.shield(reading), PATIENCE_S)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writing.cancel()
        reading.cancel()
        writer.close()
    status, parsed, _ = _parse(bytes(received))
    seconds = time.perf_counter() - started
    assert seconds < PATIENCE_S, f"hung: no answer or close within {PATIENCE_S} s ({bytes(received[:200])!r})"
    return Answer(status, parsed, sent, seconds)


def _head(path: str, headers: dict[str, str | bytes]) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    lines += [k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _refused(answer: Answer, *statuses: int) -> None:
    """A 4xx JSON answer (one of ``statuses``) or a closed connection; never a 5xx."""
    if answer.status is None:
        return
    assert answer.status in statuses, answer
    assert answer.body is not None and answer.body["error"] and answer.body["reason"], answer


def _healthy(server: str) -> None:
    assert httpx.get(f"{server}/healthz", timeout=PATIENCE_S).json() == {"status": "ok"}


async def _healthz_during(server: str, work) -> list:
    """Run ``work`` while polling /healthz every 0.5 s; returns work's result, failing if any poll failed."""
    polls: list[int] = []
    done = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=PATIENCE_S) as c:
            while not done.is_set():
                polls.append((await c.get("/healthz")).status_code)
                await asyncio.sleep(0.5)

    poller = asyncio.create_task(poll())
    try:
        return await work
    finally:
        done.set()
        await poller
        assert polls and set(polls) == {200}, polls


def test_a_trickled_body_is_cut_off_with_408(server: str) -> None:
    """One byte every 0.4 s of a 1000-byte body: HAProxy, which holds bodies whole before choosing a replica,
    gives up after serve.body_timeout_s (3 s here) with a 408 JSON answer; /healthz answers meanwhile."""
    head = _head("/predict", {"Content-Type": "image/png", "Content-Length": "1000"})
    answer = asyncio.run(_healthz_during(server, _send(server, head, 1000, chunk=1, pace_s=0.4)))
    _refused(answer, 408)
    assert answer.status == 408 and answer.body["error"] == "body_timeout", answer
    assert BODY_TIMEOUT_S - 0.5 < answer.seconds < BODY_TIMEOUT_S + 4, answer
    assert answer.sent < 1000
    _healthy(server)


def test_a_content_length_larger_than_the_body(server: str) -> None:
    """Content-Length 50000, 1000 bytes sent, then silence: 408 after serve.body_timeout_s, not a hang; and the
    same short body followed by the client closing its side: a closed connection or a 4xx, no 5xx."""
    head = _head("/predict", {"Content-Type": "image/jpeg", "Content-Length": "50000"})
    answer = asyncio.run(_send(server, head, 50_000, stop_after=1000))
    assert answer.status == 408 and answer.body["error"] == "body_timeout", answer
    host, port = _split(server)
    with socket.create_connection((host, port), timeout=PATIENCE_S) as s:
        s.sendall(head + b"\0" * 1000)
        s.shutdown(socket.SHUT_WR)
        status, body = _read_answer(s)
    _refused(Answer(status, body, 1000, 0.0), 400, 408)
    _healthy(server)


@pytest.mark.parametrize(
    "clients", [10, pytest.param(100, marks=pytest.mark.slow)], ids=lambda n: f"{n}_clients"
)
def test_concurrent_oversized_uploads_are_refused_before_their_body(server: str, clients: int) -> None:
    """``clients`` uploads of 20 MB at once (the limit here is 300 kB), all answered 413 without any being read
    whole. Half declare their size: each client sends its headers and 64 kB, then holds the rest back, and the 413
    must arrive meanwhile (the refusal does not wait for the body). Half are chunked (no Content-Length), 64 kB every
    5 ms: read up to the limit, then refused while most of the 20 MB is still on the client."""
    size = 20_000_000
    declared = _head("/predict", {"Content-Type": "image/jpeg", "Content-Length": str(size)})
    chunked_head = _head("/predict", {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})

    async def chunked() -> Answer:
        # A chunked body: each 64 KiB is framed; _send's zero bytes would not be, so frame here.
        host, port = _split(server)
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(chunked_head)
        sent, frame = 0, b"10000\r\n" + b"\0" * 65536 + b"\r\n"

        async def write() -> None:
            nonlocal sent
            while sent < size:
                writer.write(frame)
                await writer.drain()
                sent += 65536
                await asyncio.sleep(0.005)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        writing = asyncio.create_task(write())
        raw = b""

        async def read() -> None:
            nonlocal raw
            while not _parse(raw)[2] and (more := await reader.read(65536)):
                raw += more

        try:
            await asyncio.wait_for(read(), PATIENCE_S)
        except ConnectionError:
            pass
        finally:
            writing.cancel()
            writer.close()
        status, body, _ = _parse(raw)
        return Answer(status, body, sent, time.perf_counter() - started)

    async def all_at_once() -> list[Answer]:
        return await asyncio.gather(
            *(_send(server, declared, size, stop_after=65536) if i % 2 == 0 else chunked() for i in range(clients))
        )

    started = time.perf_counter()
    answers = asyncio.run(_healthz_during(server, all_at_once()))
    took = time.perf_counter() - started
    for answer in answers:
        _refused(answer, 413)
    refused = [a for a in answers if a.status == 413]
    assert len(refused) >= 0.9 * clients, answers  # a closed connection is allowed, but not as the rule
    assert all(a.body["error"] == "too_large" for a in refused)
    assert all(a.sent == 65536 for a in answers[::2])  # answered while 99.7 % of each body was held back
    assert max(a.sent for a in answers[1::2]) < size / 4, sorted(a.sent for a in answers)[-3:]
    print(f"{clients} x 20 MB uploads: {len(refused)} x 413 in {took:.1f} s, sent at most "
          f"{max(a.sent for a in answers) / 1e6:.1f} MB each")
    _healthy(server)


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"xYzBoundary") -> tuple[bytes, str]:
    """(headers block, content) pairs -> multipart body and its content type."""
    body = b"".join(b"--" + boundary + b"\r\n" + h + b"\r\n\r\n" + c + b"\r\n" for h, c in parts)
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def _nested(depth: int) -> tuple[bytes, str]:
    """A form whose file part holds a multipart/mixed that holds another, ``depth`` levels deep."""
    inner = b"innermost"
    for level in range(depth):
        b = f"lvl{level}".encode()
        inner = b"--" + b + b"\r\nContent-Type: text/plain\r\n\r\n" + inner + b"\r\n--" + b + b"--\r\n"
        inner = b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n" + inner
    return _multipart([(b'Content-Disposition: form-data; name="file"; filename="deep.png"', inner)])


def _many(n: int, files: bool) -> tuple[bytes, str]:
    disposition = 'form-data; name="files"; filename="{}.png"' if files else 'form-data; name="note{}"'
    return _multipart([(f"Content-Disposition: {disposition.format(i)}".encode(), b"x") for i in range(n)])


@pytest.mark.parametrize(
    "kind", ["nested_500_deep", "1000_file_parts", "1000_fields", "unterminated", "no_boundary"]
)
@pytest.mark.parametrize("route", ["/predict", "/predict/batch"])
def test_hostile_multipart_gets_4xx_json(client: httpx.Client, kind: str, route: str) -> None:
    body, ctype = {
        "nested_500_deep": lambda: _nested(500),
        "1000_file_parts": lambda: _many(1000, files=True),
        "1000_fields": lambda: _many(1000, files=False),
        "unterminated": lambda: (_many(3, files=True)[0][:-8], _many(3, files=True)[1]),
        "no_boundary": lambda: (_many(3, files=True)[0], "multipart/form-data"),
    }[kind]()
    assert len(body) < MAX_BODY
    started = time.perf_counter()
    resp = client.post(route, content=body, headers={"content-type": ctype}, timeout=PATIENCE_S)
    answer = resp.json()
    if route == "/predict/batch" and resp.status_code == 200:  # parsed: each part is an image's own 4xx error
        assert answer["n_ok"] == 0 and all(400 <= r["status"] < 500 for r in answer["results"]), answer
    else:
        assert 400 <= resp.status_code < 500 and answer["error"] and answer["reason"], (resp.status_code, answer)
    print(f"{route} {kind}: {resp.status_code} {answer.get('error') or answer['results'][0]['error']}")
    assert time.perf_counter() - started < PATIENCE_S
    assert client.get("/healthz").status_code == 200


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 60, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind", ["latin1_filename", "invalid_utf8_filename", "invalid_utf8_header", "invalid_utf8_content_type",
             "invalid_utf8_query", "nul_in_filename"]
)
def test_non_utf8_names_and_headers(server: str, kind: str) -> None:
    """Bytes that are not UTF-8 in a multipart filename, a header, the content type or the query: the image is
    classified (the name and the header play no part) or refused with 4xx; never a 5xx."""
    png = _png()
    filename = {
        "latin1_filename": "soudure_\xe9t\xe9.png".encode("latin-1"),
        "invalid_utf8_filename": b"\xff\xfe\xc3.png",
        "nul_in_filename": b"a\x00b.png",
    }.get(kind, b"weld.png")
    body, ctype = _multipart([(b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
                               b"Content-Type: image/png", png)])
    headers: dict[str, str | bytes] = {"Content-Type": ctype, "Content-Length": str(len(body))}
    path = "/predict"
    if kind == "invalid_utf8_header":
        headers["X-Weld-Site"] = b"\xff\xfe\x80 atelier"
    elif kind == "invalid_utf8_content_type":
        headers["Content-Type"] = ctype.encode() + b"; charset=\xff\xfe"
    elif kind == "invalid_utf8_query":
        path = "/predict?explain=%ff%fe"
    host, port = _split(server)
    with socket.create_connection((host, port), timeout=PATIENCE_S) as s:
        s.sendall(_head(path, headers) + body)
        code, answer = _read_answer(s)
    print(f"{kind}: {code} {answer and (answer.get('error') or answer.get('class'))}")
    if kind == "invalid_utf8_query":
        assert code == 400 and answer["error"] == "invalid_image", answer
    elif code is not None:
        assert answer is not None and (code == 200 or 400 <= code < 500), (code, answer)
        if code == 200:
            assert answer["class"]
    _healthy(server)
