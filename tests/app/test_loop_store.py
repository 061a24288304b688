"""The closed loop's Redis clients under a burst, against a real Redis (DB 13): concurrent
calls share round trips (group commit) and each still gets its own answer; connections
opened before traffic."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import redis

from app.loop_store import GROUP_COMMIT_MAX, MAX_CONNECTIONS, STREAM_KEY, LoopStore, fresh_key


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

    before = _script_calls(loop_redis_url)
    recorded = asyncio.run(burst())
    # One call per request used to compete for 100 connections, and a busy event loop
    # stretched round trips past the 50 ms timeout: a few percent were lost.
    assert [r[0] if r is not None else None for r in recorded] == ["new"] * (3 * MAX_CONNECTIONS)
    # One lone call, then the rest in batches of at most GROUP_COMMIT_MAX.
    assert _script_calls(loop_redis_url) - before <= 2 + 3 * MAX_CONNECTIONS // GROUP_COMMIT_MAX
    client = redis.Redis.from_url(loop_redis_url, decode_responses=True)
    assert client.hget("recsys:imp:r7", "user") == "u7"
    assert client.get("recsys:imp:user:u250") == "r250"


def _script_calls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def _events(user: str, items: list[str]) -> dict[str, Any]:
    events = [
        {
            "fields": ["user_id", user, "item_id", item, "event", "click"],
            "exp": "",
            "variant": "",
            "rid": "",
            "item": item,
            "user": user,
            "event": "click",
            "hit": 0,
            "err": None,
            "fresh": 1,
            "now_ms": 1_000 + n,
        }
        for n, item in enumerate(items)
    ]
    return {"maxlen": 10_000, "ttl": 60, "fresh_ttl": 60, "fresh_max": 50, "events": events}


def test_concurrent_feedback_writes_and_fresh_reads_each_get_their_own_rows(
    loop_redis_url: str,
) -> None:
    users = {f"u{n}": [f"i{n}-{j}" for j in range(n % 4 + 1)] for n in range(200)}

    async def burst() -> tuple[list[list[Any]], list[list[str] | None], list[Any]]:
        store = _store(loop_redis_url)
        try:
            written = await asyncio.gather(
                *(store.write_events(_events(u, items)) for u, items in users.items())
            )
            fresh = await asyncio.gather(*(store.fresh_items(u) for u in users))
            for n, user in enumerate(users):
                if n % 2 == 0:
                    await store.record_impression(
                        request_id=f"r-{user}", user=user, variant="teacher", version="v",
                        items=users[user], ratings=[4.0] * len(users[user]),
                    )  # fmt: skip
            resolved = await asyncio.gather(*(store.resolve([("", u)]) for u in users))
            return list(written), list(fresh), list(resolved)
        finally:
            await store.aclose()

    written, fresh, resolved = asyncio.run(burst())
    assert [len(rows) for rows in written] == [len(items) for items in users.values()]
    client = redis.Redis.from_url(loop_redis_url, decode_responses=True)
    stream = {entry_id: fields for entry_id, fields in client.xrange(STREAM_KEY)}
    for (user, items), rows in zip(users.items(), written, strict=True):
        assert [stream[row.stream_id]["item_id"] for row in rows] == items
        assert {stream[row.stream_id]["user_id"] for row in rows} == {user}
    # Each user's own items, in the order of their times (each event's own now_ms).
    assert fresh == list(users.values())
    assert client.zrange(fresh_key("u3"), 0, -1, withscores=True) == [
        ("i3-0", 1000.0), ("i3-1", 1001.0), ("i3-2", 1002.0), ("i3-3", 1003.0)
    ]  # fmt: skip
    # Each request's own answer: the user's latest impression, where one was served.
    for n, ((user, items), found) in enumerate(zip(users.items(), resolved, strict=True)):
        [impression] = found
        if n % 2:
            assert impression is None
        else:
            assert impression is not None
            assert impression.request_id == f"r-{user}"
            assert (impression.user, impression.items) == (user, items)


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


def _hog(loop: asyncio.AbstractEventLoop, *, until: float) -> None:
    """Every turn of the event loop takes 100 ms until `until`, as in a burst."""
    if time.monotonic() < until:
        time.sleep(0.1)
        loop.call_soon(functools.partial(_hog, loop, until=until))


def test_timeouts_that_fired_late_on_a_busy_loop_lose_nothing(loop_redis_url: str) -> None:
    async def scenario() -> tuple[list[object], str]:
        store = LoopStore(
            loop_redis_url, fast_timeout=0.001, durable_timeout=1.0, connect_timeout=0.5,
            breaker_threshold=3, breaker_reset_seconds=5.0, impression_ttl_seconds=60,
        )  # fmt: skip
        try:
            await store.warm(1)
            recorded = []
            for n in range(3):  # as many as open the breaker when they count as failures
                # Each read spans a 100 ms turn of the loop: its 1 ms timer fires then,
                # 100 times late, in the same turn as the reply it should have waited for.
                _hog(asyncio.get_running_loop(), until=time.monotonic() + 0.15)
                row = {"request_id": f"r{n}", "user": f"u{n}", "variant": "teacher"}
                recorded.append(
                    await store.record_impression(**row, version="v", items=["1"], ratings=[4.0])
                )
                await asyncio.sleep(0.2)  # the hog is over
            return recorded, store._fast.breaker.state
        finally:
            await store.aclose()

    recorded, breaker = asyncio.run(scenario())
    # Each retried with the durable client; "repeat" where the first try had landed.
    assert all(r is not None and r[0] in ("new", "repeat") for r in recorded)
    assert breaker == "closed"  # a busy loop is not a dead Redis
    client = redis.Redis.from_url(loop_redis_url, decode_responses=True)
    assert [client.hget(f"recsys:imp:r{n}", "user") for n in range(3)] == ["u0", "u1", "u2"]
