"""Durable routing with two real workers (serve.sh) and a real Redis: after PUT
/admin/routing, neither a Redis flush with a worker restart nor a flush with a restart of
everything makes workers disagree or fall back to the settings' split."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.routing import ROUTING_KEY
from tests.faults.served import Served, serve_env, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# A database of its own on the shared server (tests/conftest.py uses 15, the e2e test 12).
REDIS_URL = "redis://127.0.0.1:6379/11"
AUTH = {"Authorization": "Bearer tok"}
SYNC_S = 0.2


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def _answers(served: Served, n: int = 30) -> set[float]:
    """The split as seen by `n` fresh connections, so that both workers answer."""
    seen = set()
    for _ in range(n):
        with httpx.Client(base_url=served.base_url, timeout=10) as client:
            seen.add(client.get("/admin/routing", headers=AUTH).json()["student_percent"])
    return seen


def _eventually(check: Callable[[], bool], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _workers(served: Served) -> list[int]:
    children = subprocess.run(
        ["pgrep", "-P", str(served.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    found = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue  # exited since pgrep listed it (the killed worker): not a live one
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(pid)
    return found


def test_routing_survives_flushes_and_restarts(
    bundle_dir: Path, store: redis.Redis, tmp_path: Path
) -> None:
    routing_file = tmp_path / "shared" / "routing.json"
    routing_file.parent.mkdir()
    env = serve_env(
        bundle_dir,
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
        REDIS_URL=REDIS_URL,
        ADMIN_TOKEN="tok",
        AB_STUDENT_PERCENT="10",
        ROUTING_SYNC_SECONDS=str(SYNC_S),
        ROUTING_FILE=str(routing_file),
    )
    with serving(env, tmp_path / "first.log") as server:
        assert _eventually(lambda: len(_workers(server)) == 2, timeout=30)
        changed = httpx.put(
            f"{server.base_url}/admin/routing",
            json={"student_percent": 50},
            headers=AUTH,
            timeout=10,
        )
        assert changed.json()["shared"] is True
        assert _eventually(lambda: _answers(server) == {50.0}, timeout=10)

        # Redis flushed, the file gone too, one worker killed and respawned with the
        # settings' 10%: the surviving worker puts 50% back and the new one adopts it.
        store.flushdb()
        routing_file.unlink()
        victim = _workers(server)[0]
        os.kill(victim, signal.SIGKILL)
        assert _eventually(
            lambda: len(_workers(server)) == 2 and victim not in _workers(server), timeout=60
        )
        assert _eventually(lambda: _answers(server) == {50.0}, timeout=10), _answers(server)
        assert _eventually(lambda: store.get(ROUTING_KEY) is not None, timeout=5)
        assert routing_file.is_file()

    # Everything restarted on a flushed Redis: the split comes back from the file.
    store.flushdb()
    with serving(env, tmp_path / "second.log") as server:
        assert _answers(server) == {50.0}
        assert _eventually(lambda: store.get(ROUTING_KEY) is not None, timeout=5)
