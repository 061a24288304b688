"""A request the HTTP parser refuses gets the app's JSON error, from both protocols.

uvicorn runs in a thread with a trivial ASGI app: the refusal happens before any app is
called. The oversized and slow heads are tested through serve.sh in
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

from app.http_protocol import HttpProtocol, LimitedH11Protocol

pytestmark = pytest.mark.timeout(60)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=[HttpProtocol, LimitedH11Protocol], ids=["httptools", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    config = uvicorn.Config(
        _ok, host="127.0.0.1", port=free, http=request.param, log_level="critical", lifespan="off"
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
