"""Cache parts on their own: LRU, circuit breaker, single-flight, Redis backend."""

from __future__ import annotations

import threading
import time

import pytest

from app.cache import (
    CacheUnavailableError,
    CircuitBreaker,
    LocalLRUCache,
    RecommendationCache,
    RedisCache,
    SingleFlight,
)
from app.metrics import Metrics


class ManualClock:
    """A clock the test advances, so breaker timing is exact instead of slept."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lru_evicts_least_recently_used() -> None:
    cache = LocalLRUCache(max_entries=2)
    cache.set("a", b"1", ttl_seconds=60)
    cache.set("b", b"2", ttl_seconds=60)
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.set("c", b"3", ttl_seconds=60)
    assert cache.get("b") is None
    assert cache.get("a") == b"1" and cache.get("c") == b"3"


def test_lru_entries_expire() -> None:
    cache = LocalLRUCache(max_entries=10)
    cache.set("a", b"1", ttl_seconds=1)
    assert cache.get("a") == b"1"
    time.sleep(1.05)
    assert cache.get("a") is None


def test_breaker_opens_after_threshold_and_probes_after_reset() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, reset_seconds=5, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 5
    assert breaker.state == "half_open"
    assert breaker.allow()  # one probe ...
    assert not breaker.allow()  # ... and only one
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()


def test_an_inconclusive_probe_leaves_the_circuit_open_for_the_next_probe() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=1, reset_seconds=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()  # the probe; the process was too busy to learn anything
    breaker.record_inconclusive()
    assert breaker.state == "half_open"  # neither closed nor open for another 5 s
    assert breaker.allow()  # another caller may probe: the circuit is not stuck open
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.record_inconclusive()  # and in a closed circuit it counts for nothing
    assert breaker.state == "closed"


def test_single_flight_runs_concurrent_work_once() -> None:
    flights = SingleFlight()
    calls = 0
    started = threading.Event()
    release = threading.Event()

    def work() -> tuple[bytes, str]:
        nonlocal calls
        calls += 1
        started.set()
        release.wait(5)
        return b"value", "miss"

    results: list[tuple[bytes, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(flights.do("k", work))) for _ in range(8)
    ]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)  # let the followers reach the wait
    release.set()
    for thread in threads:
        thread.join(5)
    assert calls == 1
    assert results == [(b"value", "miss")] * 8


def test_single_flight_shares_the_error_and_forgets_the_key() -> None:
    flights = SingleFlight()

    def broken() -> tuple[bytes, str]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        flights.do("k", broken)
    assert flights.do("k", lambda: (b"ok", "miss")) == (b"ok", "miss")


def test_recommendation_cache_computes_concurrent_misses_once(redis_url: str) -> None:
    breaker = CircuitBreaker(threshold=3, reset_seconds=5)
    cache = RecommendationCache(
        RedisCache(redis_url, socket_timeout=0.5, breaker=breaker),
        ttl_seconds=30,
        metrics=Metrics(),
    )
    calls = 0
    lock = threading.Lock()

    def compute() -> bytes:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.3)
        return b"list"

    results: list[tuple[bytes, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("key", compute)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert calls == 1
    assert {value for value, _ in results} == {b"list"}
    assert cache.get_or_compute("key", compute) == (b"list", True)
    assert calls == 1
    cache.close()


def test_redis_backend_round_trip_with_ttl(redis_url: str) -> None:
    import redis  # noqa: PLC0415

    backend = RedisCache(
        redis_url, socket_timeout=0.5, breaker=CircuitBreaker(threshold=3, reset_seconds=5)
    )
    backend.set("rt", b"payload", ttl_seconds=30)
    assert backend.get("rt") == b"payload"
    assert backend.get("absent") is None
    ttl = redis.Redis.from_url(redis_url).ttl("rt")
    assert 0 < ttl <= 30
    assert backend.status() == "up"
    backend.close()


def test_dead_redis_raises_unavailable_then_short_circuits() -> None:
    # Port 1 on localhost: nothing listens, connections are refused at once.
    backend = RedisCache(
        "redis://127.0.0.1:1/0",
        socket_timeout=0.05,
        breaker=CircuitBreaker(threshold=2, reset_seconds=60),
    )
    for _ in range(2):
        with pytest.raises(CacheUnavailableError):
            backend.get("k")
    assert backend.breaker.state == "open"
    # No connection attempt now: the breaker answers for the dead server.
    with pytest.raises(CacheUnavailableError, match="circuit open"):
        backend.get("k")
    assert backend.status() == "degraded"


def test_near_cache_serves_repeats_without_the_backend(redis_url: str) -> None:
    import redis  # noqa: PLC0415

    metrics = Metrics()
    backend = RedisCache(
        redis_url, socket_timeout=0.5, breaker=CircuitBreaker(threshold=3, reset_seconds=5)
    )
    cache = RecommendationCache(
        backend,
        ttl_seconds=30,
        metrics=metrics,
        local=LocalLRUCache(max_entries=2),
        local_ttl_seconds=60,
    )
    assert cache.peek("a") is None
    assert cache.get_or_compute("a", lambda: b"A") == (b"A", False)
    redis.Redis.from_url(redis_url).flushdb()
    assert cache.peek("a") == b"A"
    assert cache.get_or_compute("a", lambda: b"other") == (b"A", True)
    # Bounded: two more keys push "a" out of the near cache (and Redis no longer has it).
    cache.get_or_compute("b", lambda: b"B")
    cache.get_or_compute("c", lambda: b"C")
    assert cache.peek("a") is None
    assert cache.get_or_compute("a", lambda: b"A2") == (b"A2", False)
    assert metrics.cache_local_hits_total._value.get() == 2
    cache.close()


def test_near_cache_ttl_is_capped_and_zero_disables() -> None:
    backend = LocalLRUCache(max_entries=10)
    off = RecommendationCache(
        backend,
        ttl_seconds=30,
        metrics=Metrics(),
        local=LocalLRUCache(max_entries=10),
        local_ttl_seconds=0,
    )
    assert off._local is None
    capped = RecommendationCache(
        backend,
        ttl_seconds=3,
        metrics=Metrics(),
        local=LocalLRUCache(max_entries=10),
        local_ttl_seconds=60,
    )
    assert capped._local_ttl == 3


def test_memory_backend_is_the_only_tier() -> None:
    from app.cache import build_cache  # noqa: PLC0415

    cache = build_cache(
        redis_url="",
        ttl_seconds=30,
        max_entries=10,
        socket_timeout=0.05,
        breaker_threshold=3,
        breaker_reset_seconds=5,
        metrics=Metrics(),
        local_ttl_seconds=5,
    )
    assert isinstance(cache.backend, LocalLRUCache) and cache._local is None
    assert cache.get_or_compute("k", lambda: b"v") == (b"v", False)
    assert cache.peek("k") == b"v"
