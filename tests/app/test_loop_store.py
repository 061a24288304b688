"""The closed loop's Redis clients under a burst, against a real Redis (DB 13): more calls at
once than a pool holds wait for a connection instead of failing, and connections opened
before traffic."""

from __future__ import annotations

import asyncio

from app.loop_store import MAX_CONNECTIONS, LoopStore


def _store(url: str) -> LoopStore:
    return LoopStore(
        url,
        fast_timeout=0.05,
        durable_timeout=1.0,
        connect_timeout=0.5,
        breaker_threshold=3,
        breaker_reset_seconds=5.0,
        impression_ttl_seconds=60,
    )


def test_a_burst_beyond_the_pool_records_every_impression(loop_redis_url: str) -> None:
    async def burst() -> list[object]:
        store = _store(loop_redis_url)
        try:
            return await asyncio.gather(
                *(
                    store.record_impression(
                        request_id=f"r{n}",
                        user=f"u{n}",
                        variant="student",
                        version="v",
                        items=["1", "2"],
                        ratings=[4.0, 3.5],
                    )
                    for n in range(3 * MAX_CONNECTIONS)
                )
            )
        finally:
            await store.aclose()

    recorded = asyncio.run(burst())
    # redis-py's default pool refused every call past 100 connections, and three refusals
    # opened the breaker, which then dropped the rest.
    assert [r[0] if r is not None else None for r in recorded] == ["new"] * (3 * MAX_CONNECTIONS)


def test_warm_opens_connections_and_never_raises(loop_redis_url: str) -> None:
    async def warm(url: str) -> int:
        store = _store(url)
        try:
            return await store.warm(5)
        finally:
            await store.aclose()

    assert asyncio.run(warm(loop_redis_url)) == 5
    # Nothing listens on port 1: refused at once, logged, not raised.
    assert asyncio.run(warm("redis://127.0.0.1:1/0")) == 0
