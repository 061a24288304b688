"""A request the HTTP parser refuses gets the app's JSON error, and a slow head or body a
408, from both protocols (httptools, and h11 where httptools is missing).

uvicorn runs in a thread with a trivial ASGI app: the refusal happens before any app is
called. The oversized and slow heads are also tested through serve.sh in
tests/faults/test_request_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.http_protocol import HttpProtocol, LimitedH11Protocol, connection_limits

pytestmark = pytest.mark.timeout(60)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # the whole body first, as the app's routes read it
        more = (await receive()).get("more_body", False)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=[HttpProtocol, LimitedH11Protocol], ids=["httptools", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _serve(request.param)


@pytest.fixture(params=[HttpProtocol, LimitedH11Protocol], ids=["httptools", "h11"])
def quick_port(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A server whose head and body deadlines are half a second."""
    monkeypatch.setenv("HTTP_HEADER_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("HTTP_BODY_TIMEOUT_SECONDS", "0.5")
    connection_limits.cache_clear()
    try:
        yield from _serve(request.param)
    finally:
        connection_limits.cache_clear()


def _serve(protocol: type[asyncio.Protocol]) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    config = uvicorn.Config(
        _ok, host="127.0.0.1", port=free, http=protocol, log_level="critical", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.mark.parametrize(
    "payload",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /he\x00lthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["garbage", "header-without-colon", "nul-in-target"],
)
def test_an_unparseable_request_is_a_json_400(port: int, payload: bytes) -> None:
    head, _, body = _exchange(port, payload).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head.lower()
    parsed = json.loads(body)
    assert parsed["detail"].startswith("malformed HTTP request")
    assert f"x-request-id: {parsed['request_id']}".encode() in head.lower()


def test_a_good_request_is_still_served(port: int) -> None:
    answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")


def _timed_exchange(port: int, payload: bytes) -> tuple[bytes, float]:
    """What the server answers to `payload` sent and then nothing more, and after how long."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
        return answer, time.monotonic() - start


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", "head"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", "body"),
    ],
    ids=["head", "body"],
)
def test_a_request_that_stops_coming_is_a_json_408(
    quick_port: int, payload: bytes, what: str
) -> None:
    answer, waited = _timed_exchange(quick_port, payload)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert json.loads(body)["detail"] == f"request {what} not received in time"
    assert 0.4 < waited < 5.0


def test_a_kept_alive_connection_serves_the_next_request_after_the_deadline(
    quick_port: int,
) -> None:
    # The deadlines are per request: a connection idle between requests is the keep-alive
    # timer's, and a complete request is never cut off by an earlier one's clock.
    with socket.create_connection(("127.0.0.1", quick_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"ok"):
            first += sock.recv(65536)
        time.sleep(0.8)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
