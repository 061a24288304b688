"""Redis dies or stalls under load: every request is still answered, errors are counted,
latency stays bounded, and caching comes back with Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from bench._server import uvicorn_server
from tests.faults.conftest import (
    RedisProcess,
    bundle_users,
    drive_load,
    failures,
    metric_value,
    server_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SOCKET_TIMEOUT_S = 0.05
BREAKER_RESET_S = 0.5


def _redis_env(bundle: Path, redis_url: str) -> dict[str, str]:
    return server_env(
        bundle,
        REDIS_URL=redis_url,
        REDIS_SOCKET_TIMEOUT_SECONDS=str(SOCKET_TIMEOUT_S),
        BREAKER_FAILURE_THRESHOLD="3",
        BREAKER_RESET_SECONDS=str(BREAKER_RESET_S),
        # These tests are about the Redis tier: no in-process near cache in front of it.
        CACHE_LOCAL_TTL_SECONDS="0",
    )


def test_redis_killed_mid_load_fails_no_request_and_caching_resumes(
    bundle_dir: Path, redis_process: RedisProcess
) -> None:
    users = bundle_users(bundle_dir)[:12]  # few users, so that lists repeat and hit

    def make_request(worker: int, n: int) -> tuple[str, str, None]:
        return "GET", f"/recommend?user_id={users[(worker * 5 + n) % len(users)]}&k=5", None

    marks: dict[str, float] = {}
    with uvicorn_server(_redis_env(bundle_dir, redis_process.url)) as server:

        async def scenario() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis_process.kill)  # returns once the process is gone
            marks["dead"] = time.monotonic()
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient(base_url=server.base_url) as probe:
                ready = await probe.get("/readyz")
                marks["ready_status"] = ready.status_code
            # Redis may answer before start() sees it answer: the outage ends here.
            marks["restarting"] = time.monotonic()
            await asyncio.to_thread(redis_process.start)
            marks["restarted"] = time.monotonic()
            # Long enough for the breaker to let a probe through and for lists to be
            # stored and read again; the load keeps running all the while.
            await asyncio.sleep(BREAKER_RESET_S * 2 + 2.0)

        outcomes = asyncio.run(
            drive_load(server.base_url, make_request, concurrency=4, during=scenario)
        )
        metrics = httpx.get(f"{server.base_url}/metrics").text

    assert outcomes, "the load produced no requests"
    assert failures(outcomes) == [], f"failed requests: {failures(outcomes)[:5]}"
    assert marks["ready_status"] == 200, "the service must stay ready without Redis"
    assert metric_value(metrics, "cache_requests_total", result="error") > 0
    # Only requests that ran wholly while no Redis process existed; on a loaded machine a
    # request sent before start() returned can already be served by the new one.
    during_outage = [
        o for o in outcomes if marks["dead"] < o.started and o.finished < marks["restarting"]
    ]
    assert during_outage, "no request ran while Redis was down"
    assert not any(o.body and o.body["cached"] for o in during_outage), (
        "nothing can be a hit while the only cache is dead"
    )
    # The restarted Redis is empty: a hit after the restart was stored after it.
    after = [o for o in outcomes if o.started > marks["restarted"]]
    assert any(o.body and o.body["cached"] for o in after), "caching did not resume"


def test_slow_redis_keeps_latency_bounded(bundle_dir: Path, redis_process: RedisProcess) -> None:
    users = bundle_users(bundle_dir)
    stall_s = 3.0

    def make_request(worker: int, n: int) -> tuple[str, str, None]:
        return "GET", f"/recommend?user_id={users[(worker * 7 + n) % len(users)]}&k=5", None

    marks: dict[str, float] = {}
    with uvicorn_server(_redis_env(bundle_dir, redis_process.url)) as server:

        def stall() -> None:
            # DEBUG SLEEP blocks the whole server: every client's command waits.
            client = redis.Redis.from_url(redis_process.url, socket_timeout=stall_s + 5)
            marks["stall_start"] = time.monotonic()
            client.execute_command("DEBUG", "SLEEP", str(stall_s))
            marks["stall_end"] = time.monotonic()
            client.close()

        async def scenario() -> None:
            await asyncio.sleep(0.5)
            thread = threading.Thread(target=stall)
            thread.start()
            await asyncio.to_thread(thread.join)
            await asyncio.sleep(0.3)

        outcomes = asyncio.run(
            drive_load(server.base_url, make_request, concurrency=4, during=scenario)
        )
        metrics = httpx.get(f"{server.base_url}/metrics").text

    assert failures(outcomes) == [], f"failed requests: {failures(outcomes)[:5]}"
    stalled = [
        o for o in outcomes if marks["stall_start"] + 0.05 < o.started < marks["stall_end"] - 0.5
    ]
    assert len(stalled) >= 10, "too few requests ran while Redis was stalled"
    worst = max(o.finished - o.started for o in stalled)
    # Without a timeout a request would wait for the whole stall; with the socket timeout
    # and the breaker it waits at most a few timeouts (generous for a busy CI machine).
    assert worst < 1.0, f"a request took {worst:.2f} s while Redis stalled for {stall_s} s"
    assert metric_value(metrics, "cache_requests_total", result="error") > 0
