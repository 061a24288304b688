"""Cached /recommend fragments from Redis are checked; a bad one is a counted miss."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import redis

from app.cache import build_cache
from app.fragment_check import clean_fragment
from app.metrics import Metrics

REDIS_URL = "redis://127.0.0.1:6379/10"
GOOD = orjson.dumps(
    {"items": [{"item_id": "7", "title": "T", "score": 0.5, "rating": 3.5}], "fallback": None}
)[1:-1]


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"{",
        b'"items":[],"fallback":null,"admin":true',
        b'"items":[]},{"x":1',
        b'"items":[{"item_id":"7"}],"fallback":null',
        b'"items":[],"fallback":"everyone"',
    ],
)
def test_bad_fragments_are_refused(value: bytes) -> None:
    assert clean_fragment(value) is None


def test_what_passes_is_written_out_again_not_passed_on_as_it_came() -> None:
    duplicated = (
        b'"items":[{"item_id":"1","title":"T","score":1,"rating":2}],"fallback":null,"items":[]'
    )
    assert clean_fragment(duplicated) == b'"items":[],"fallback":null'


def test_good_fragments_pass_and_extra_item_fields_are_dropped() -> None:
    assert clean_fragment(GOOD) == GOOD
    extra = GOOD.replace(b'"rating":3.5', b'"rating":3.5,"script":"x"')
    assert clean_fragment(extra) == GOOD


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_an_invalid_cached_value_is_recomputed_counted_and_overwritten(
    store: redis.Redis,
) -> None:
    metrics = Metrics()
    cache = build_cache(
        redis_url=REDIS_URL, ttl_seconds=60, max_entries=10, socket_timeout=1.0,
        breaker_threshold=3, breaker_reset_seconds=1.0, metrics=metrics,
        local_ttl_seconds=0, check=clean_fragment,
    )  # fmt: skip
    store.set("k", b'"items":[],"fallback":null,"admin":true')
    assert cache.get_or_compute("k", lambda: GOOD) == (GOOD, False)
    assert store.get("k") == GOOD
    assert cache.get_or_compute("k", lambda: b"unused") == (GOOD, True)
    invalid = metrics.cache_requests_total.labels(result="invalid")._value.get()
    assert invalid == 1
    cache.close()


def test_the_near_cache_keeps_working_without_redis() -> None:
    metrics = Metrics()
    cache = build_cache(
        redis_url="redis://127.0.0.1:1/0", ttl_seconds=60, max_entries=10, socket_timeout=0.05,
        breaker_threshold=1, breaker_reset_seconds=60, metrics=metrics, local_ttl_seconds=5,
        check=clean_fragment,
    )  # fmt: skip
    calls = []

    def compute() -> bytes:
        calls.append(1)
        return GOOD

    assert cache.get_or_compute("k", compute) == (GOOD, False)
    assert cache.get_or_compute("k", compute) == (GOOD, True)
    assert len(calls) == 1 and metrics.cache_local_hits_total._value.get() == 1
    cache.close()
