"""Limits before parsing, through serve.sh's real uvicorn: oversized heads (431), slow heads
and bodies (408), bodies by Content-Length and while streaming (413), admin auth before the
body."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import metric_value
from tests.faults.served import Served, serve_env, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MAX_HEAD = 16_384
MAX_BODY = 65_536
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = serve_env(
        bundle_dir,
        HTTP_MAX_HEADER_BYTES=str(MAX_HEAD),
        HTTP_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT_S),
        HTTP_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_S),
        MAX_BODY_BYTES=str(MAX_BODY),
        ADMIN_TOKEN="tok",
    )
    with serving(env, tmp_path_factory.mktemp("limits") / "server.log") as served:
        yield served


def _raw(served: Served, payload: bytes, *, read_timeout: float = 10.0) -> tuple[bytes, float]:
    """Sends `payload` on a fresh connection; (what came back until close, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=read_timeout) as sock:
        # Refused while still sending is fine: the answer is what matters.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def _status_and_body(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    parsed = json.loads(body)
    # Every error carries a request id, in the body and in the X-Request-ID header.
    assert parsed["request_id"] and f"x-request-id: {parsed['request_id']}".encode() in head.lower()
    return int(head.split(b" ", 2)[1]), parsed


def test_an_oversized_head_is_431_and_does_not_stall_others(server: Served) -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - started)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        while not latencies:
            time.sleep(0.01)
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
        raw, elapsed = _raw(server, huge)
        time.sleep(0.2)
    finally:
        stop.set()
        prober.join()
    status, body = _status_and_body(raw)
    # Refused once the limit is passed, not after buffering the 8 MB.
    assert status == 431 and str(MAX_HEAD) in str(body["detail"]) and elapsed < 2
    assert max(latencies) < 1.0, max(latencies)
    # A head just under the limit is served as usual.
    ok = httpx.get(f"{server.base_url}/healthz", headers={"X-Big": "a" * (MAX_HEAD // 2)})
    assert ok.status_code == 200


def test_an_oversized_head_in_one_read_is_431(server: Served) -> None:
    # A head that arrives whole in one read was parsed before it was counted.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    assert _status_and_body(_raw(server, head)[0])[0] == 431
    # The same on a kept-alive connection, after a request that was served.
    ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(ok)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        rest = b"".join(iter(lambda: sock.recv(65536), b""))
    assert _status_and_body(rest)[0] == 431


def test_a_blank_line_split_across_reads_ends_the_head(server: Served) -> None:
    # The head's last CRLF arrives with a body larger than the head limit: only the head
    # counts against the limit.
    body = b'{"user_id": "1", "item_id": "1"}' + b" " * (2 * MAX_HEAD)
    head = (
        b"POST /predict_rating HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r" % len(body)
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        time.sleep(0.2)  # a read of its own
        sock.sendall(b"\n" + body)
        answer = sock.recv(65536)
    assert not answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]


@pytest.mark.parametrize("drip", [False, True])
def test_a_body_that_never_completes_is_408(server: Served, drip: bool) -> None:
    head = (
        b"POST /predict_rating HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        # One byte every 0.2 s keeps the connection busy but never finishes the body.
        sock.settimeout(0.2 if drip else 10)
        chunks: list[bytes] = []
        while time.monotonic() - started < 10:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b" ")
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    elapsed = time.monotonic() - started
    assert _status_and_body(b"".join(chunks))[0] == 408
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + 5
    # A body that comes in time is served as before.
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_a_head_that_never_completes_is_closed(server: Served) -> None:
    raw, elapsed = _raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
    assert _status_and_body(raw)[0] == 408
    assert HEAD_TIMEOUT_S * 0.9 <= elapsed < HEAD_TIMEOUT_S + 5


def test_a_declared_oversized_body_is_413_before_it_is_sent(server: Served) -> None:
    # The body is never sent: the answer must come from the head alone.
    head = (
        b"POST /predict_rating HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    raw, elapsed = _raw(server, head)
    status, body = _status_and_body(raw)
    assert status == 413 and body["request_id"] and elapsed < 5


def test_a_chunked_body_is_cut_off_at_the_limit(server: Served) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MB if it were all read
            sent += 65536
            yield b" " * 65536

    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        response = client.post(
            "/predict_rating", content=chunks(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text
        assert response.json()["request_id"] == response.headers["x-request-id"]
        # The service still answers normally afterwards.
        assert client.get("/healthz").status_code == 200


def test_admin_auth_comes_before_the_body(server: Served) -> None:
    head = (
        b"PUT /admin/routing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000\r\n\r\n"
    )
    raw, elapsed = _raw(server, head)
    assert _status_and_body(raw)[0] == 401 and elapsed < 5
    wrong = head.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer nope\r\n")
    assert _status_and_body(_raw(server, wrong)[0])[0] == 403


def test_unknown_methods_share_one_metric_label(server: Served) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for method in ("PROPFIND", "MKCOL", "LOCK", "PURGE"):
            client.request(method, "/recommend")
        text = client.get("/metrics").text
    assert metric_value(text, "http_request_duration_seconds_count", method="OTHER") >= 1
    for method in ("PROPFIND", "MKCOL", "LOCK", "PURGE"):
        assert f'method="{method}"' not in text
