"""Durable routing: versions, Redis re-seeding after a flush, the routing file (real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.cache import CircuitBreaker, RedisCache
from app.routing import ROUTING_KEY, ABRouter, RoutingConfig, RoutingSync

# A database of its own: tests/conftest.py's is 15, the e2e test's 12, the fault test's 11.
REDIS_URL = "redis://127.0.0.1:6379/10"


@pytest.fixture
def store() -> Iterator[RedisCache]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    cache = RedisCache(
        REDIS_URL, socket_timeout=1.0, breaker=CircuitBreaker(threshold=3, reset_seconds=1)
    )
    try:
        yield cache
    finally:
        cache.close()
        client.flushdb()
        client.close()


def _worker(store: RedisCache | None, path: Path | None, percent: float = 10) -> RoutingSync:
    return RoutingSync(ABRouter(student_percent=percent, salt="s"), store, path=path)


def test_admin_changes_are_versioned_newest_wins() -> None:
    router = ABRouter(student_percent=10, salt="s")
    assert router.config.version == 0
    first = router.update(student_percent=50)
    second = router.update(student_percent=60)
    assert 0 < first.version < second.version
    assert not router.adopt(first) and router.config.student_percent == 60
    assert router.adopt(RoutingConfig(70, "s", second.version + 1))
    assert RoutingConfig.from_json(second.to_json()) == second
    # Written before versions existed: newer than the settings, older than any change.
    assert RoutingConfig.from_json(b'{"student_percent": 5, "salt": "x"}') == RoutingConfig(
        5, "x", 1
    )
    for bad in (b"{", b'{"student_percent": 101, "salt": "x"}', b'{"salt": ""}', b"[]"):
        assert RoutingConfig.from_json(bad) is None


def test_a_flushed_redis_is_reseeded_and_a_new_worker_agrees(store: RedisCache) -> None:
    old = _worker(store, None)
    old._router.update(student_percent=50)  # an admin PUT on this worker
    assert old.publish(old._router.config)
    redis.Redis.from_url(REDIS_URL).flushdb()
    new = _worker(store, None)  # restarted after the flush: settings' 10%
    new.refresh()
    assert new._router.config.student_percent == 10
    old.refresh()  # the next sync pass of the surviving worker puts it back
    new.refresh()
    assert new._router.config.student_percent == 50
    # The settings' split is never written: there is nothing to spread.
    redis.Redis.from_url(REDIS_URL).flushdb()
    _worker(store, None, percent=20).refresh()
    assert store.get(ROUTING_KEY) is None


def test_the_routing_file_survives_everything(store: RedisCache, tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    worker = _worker(store, path)
    change = worker._router.update(student_percent=35)
    assert worker.publish(change) and RoutingConfig.from_json(path.read_bytes()) == change
    redis.Redis.from_url(REDIS_URL).flushdb()
    # Every worker restarted, Redis empty: the file brings the split back, and into Redis.
    fresh = _worker(store, path)
    fresh.refresh()
    assert fresh._router.config == change
    raw = store.get(ROUTING_KEY)
    assert raw is not None and RoutingConfig.from_json(raw) == change
    # Without Redis at all the file alone is shared.
    assert _worker(None, path).publish(change)
    path.write_bytes(b"garbage")
    broken = _worker(None, path)
    broken.refresh()
    assert broken._router.config.version == 0
