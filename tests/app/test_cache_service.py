"""The /recommend cache in the running app: real Redis, dead Redis, killed Redis."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from tests.app.conftest import Reference, copy_bundle, metric_value


def _get(client: TestClient, user: str, **params: object) -> dict:
    response = client.get(
        "/recommend", params={"user_id": user, **params}, headers={"X-Variant": "teacher"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_hit_after_miss_with_real_redis(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str
) -> None:
    client = make_client(redis_url=redis_url, cache_ttl_seconds=120)
    user = reference.users[0]
    first = _get(client, user, k=5)
    second = _get(client, user, k=5)
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["items"] == second["items"]
    assert metric_value(client, "cache_requests_total", result="miss") == 1
    assert metric_value(client, "cache_requests_total", result="hit") == 1

    keys = redis.Redis.from_url(redis_url).keys("rec:*")
    assert len(keys) == 1 and reference.version.encode() in keys[0]
    assert 0 < redis.Redis.from_url(redis_url).ttl(keys[0]) <= 120

    # Each of k, the exclude flag, the variant and the user is part of the key.
    assert _get(client, user, k=6)["cached"] is False
    assert _get(client, user, k=5, exclude_seen="false")["cached"] is False
    assert _get(client, reference.users[1], k=5)["cached"] is False
    student = client.get(
        "/recommend", params={"user_id": user, "k": 5}, headers={"X-Variant": "student"}
    ).json()
    assert student["cached"] is False


def test_fallback_lists_are_cached_too(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    client = make_client(redis_url=redis_url)
    first = _get(client, "newcomer", k=4)
    again = _get(client, "another-newcomer", k=4)
    assert first["fallback"] == again["fallback"] == "popular"
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["user_id"] == "another-newcomer"
    cold = _get(client, "newcomer", k=4, age=30)
    assert cold["fallback"] == "cold_start" and cold["cached"] is False


def test_reload_uses_new_keys(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str, tmp_path: Path
) -> None:
    client = make_client(redis_url=redis_url, admin_token="secret")
    user = reference.users[2]
    assert _get(client, user)["cached"] is False
    assert _get(client, user)["cached"] is True
    new = copy_bundle(reference.dir, tmp_path, version="test-v2")
    response = client.post(
        "/admin/reload", json={"model_dir": str(new)}, headers={"Authorization": "Bearer secret"}
    )
    assert response.status_code == 200, response.text
    after = _get(client, user)
    assert after["model_version"] == "test-v2"
    assert after["cached"] is False
    assert _get(client, user)["cached"] is True


def test_unreachable_redis_never_fails_a_request(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(
        redis_url="redis://127.0.0.1:1/0", breaker_failure_threshold=2, breaker_reset_seconds=60
    )
    for user in reference.users[:6]:
        body = _get(client, user, k=3)
        assert body["cached"] is False and len(body["items"]) == 3
    assert metric_value(client, "cache_requests_total", result="error") == 6
    assert metric_value(client, "cache_requests_total", result="hit") == 0
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["cache"] == {"backend": "redis", "status": "degraded"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=0.2).ping():
                return process
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture
def own_redis() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A private redis-server this test may kill and restart."""
    port = _free_port()
    processes = [_start_redis(port)]
    yield port, processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_killed_redis_degrades_then_recovers(
    make_client: Callable[..., TestClient],
    reference: Reference,
    own_redis: tuple[int, list[subprocess.Popen[bytes]]],
) -> None:
    port, processes = own_redis
    # The Redis tier alone: the near cache would (rightly) keep answering hits.
    client = make_client(
        redis_url=f"redis://127.0.0.1:{port}/0",
        breaker_failure_threshold=2,
        breaker_reset_seconds=0.5,
        cache_local_ttl_seconds=0,
    )
    user = reference.users[3]
    assert _get(client, user)["cached"] is False
    assert _get(client, user)["cached"] is True

    processes[0].kill()
    processes[0].wait(5)
    for _ in range(5):
        assert _get(client, user)["cached"] is False
    assert metric_value(client, "cache_requests_total", result="error") == 5
    assert client.get("/readyz").status_code == 200

    processes.append(_start_redis(port))
    time.sleep(0.6)  # past breaker_reset_seconds: the next request probes Redis
    assert _get(client, user)["cached"] is False  # a fresh server: a miss, then stored
    assert _get(client, user)["cached"] is True
    assert client.get("/readyz").json()["cache"]["status"] == "up"


def test_memory_cache_is_the_default(client: TestClient, reference: Reference) -> None:
    user = reference.users[4]
    assert _get(client, user)["cached"] is False
    assert _get(client, user)["cached"] is True
    assert client.get("/readyz").json()["cache"] == {"backend": "memory", "status": "up"}
    assert json.loads(client.get("/readyz").text)["status"] == "ready"


def test_near_cache_answers_without_redis(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str
) -> None:
    client = make_client(redis_url=redis_url, cache_local_ttl_seconds=60)
    user = reference.users[5]
    first = _get(client, user, k=5)
    assert first["cached"] is False
    # Redis no longer holds the list: only the in-process tier can answer.
    redis.Redis.from_url(redis_url).flushdb()
    again = _get(client, user, k=5)
    assert again["cached"] is True and again["items"] == first["items"]
    assert redis.Redis.from_url(redis_url).keys("rec:*") == []
    assert metric_value(client, "cache_requests_total", result="hit") == 1
    assert metric_value(client, "cache_local_hits_total") == 1
    # Another key still goes to Redis (miss, then stored there).
    assert _get(client, user, k=6)["cached"] is False
    assert len(redis.Redis.from_url(redis_url).keys("rec:*")) == 1


def test_redis_hit_fills_the_near_cache(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str
) -> None:
    writer = make_client(redis_url=redis_url, cache_local_ttl_seconds=0)
    reader = make_client(redis_url=redis_url, cache_local_ttl_seconds=60)
    user = reference.users[6]
    assert _get(writer, user)["cached"] is False
    assert _get(reader, user)["cached"] is True  # from Redis, then kept in memory
    assert metric_value(reader, "cache_local_hits_total") == 0
    redis.Redis.from_url(redis_url).flushdb()
    assert _get(reader, user)["cached"] is True
    assert metric_value(reader, "cache_local_hits_total") == 1
    assert metric_value(reader, "cache_requests_total", result="hit") == 2


def test_near_cache_off_with_zero_ttl(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str
) -> None:
    client = make_client(redis_url=redis_url, cache_local_ttl_seconds=0)
    user = reference.users[7]
    assert _get(client, user)["cached"] is False
    assert _get(client, user)["cached"] is True  # from Redis
    redis.Redis.from_url(redis_url).flushdb()
    assert _get(client, user)["cached"] is False
    assert metric_value(client, "cache_local_hits_total") == 0


def test_near_cache_entries_expire(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str
) -> None:
    client = make_client(redis_url=redis_url, cache_local_ttl_seconds=1)
    user = reference.users[8]
    assert _get(client, user)["cached"] is False
    redis.Redis.from_url(redis_url).flushdb()
    assert _get(client, user)["cached"] is True
    time.sleep(1.1)
    assert _get(client, user)["cached"] is False


def test_reload_bypasses_the_near_cache(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str, tmp_path: Path
) -> None:
    client = make_client(redis_url=redis_url, admin_token="secret", cache_local_ttl_seconds=60)
    user = reference.users[9]
    assert _get(client, user)["cached"] is False
    assert _get(client, user)["cached"] is True
    new = copy_bundle(reference.dir, tmp_path, version="test-v3")
    response = client.post(
        "/admin/reload", json={"model_dir": str(new)}, headers={"Authorization": "Bearer secret"}
    )
    assert response.status_code == 200, response.text
    after = _get(client, user)
    assert (after["model_version"], after["cached"]) == ("test-v3", False)
    assert _get(client, user)["cached"] is True
