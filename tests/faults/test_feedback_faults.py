"""Redis dies or freezes under feedback: /feedback answers 503 with Retry-After and never
acknowledges an event it did not write, while /recommend keeps answering."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench._server import uvicorn_server
from tests.faults.conftest import (
    RedisProcess,
    bundle_users,
    drive_load,
    metric_value,
    server_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STREAM = "recsys:events"


def _env(bundle: Path, redis_url: str) -> dict[str, str]:
    return server_env(
        bundle,
        REDIS_URL=redis_url,
        REDIS_SOCKET_TIMEOUT_SECONDS="0.05",
        FEEDBACK_REDIS_TIMEOUT_SECONDS="0.2",
        BREAKER_FAILURE_THRESHOLD="3",
        BREAKER_RESET_SECONDS="0.5",
        CACHE_LOCAL_TTL_SECONDS="0",
    )


def _item(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = json.loads((bundle / manifest["files"]["id_maps"]["file"]).read_text())
    return str(ids["items"][0])


def test_redis_killed_gives_503_with_retry_after_and_recommend_still_answers(
    bundle_dir: Path, redis_process: RedisProcess
) -> None:
    user, item = bundle_users(bundle_dir)[0], _item(bundle_dir)
    click = {"user_id": user, "item_id": item, "event": "click"}
    with (
        uvicorn_server(_env(bundle_dir, redis_process.url)) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        served = client.get("/recommend", params={"user_id": user}).json()
        first = client.post("/feedback", json={**click, "request_id": served["request_id"]})
        assert first.status_code == 202
        redis_process.kill()
        for _ in range(8):
            response = client.post("/feedback", json=click)
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            assert "Redis" in response.json()["detail"]
            recommended = client.get("/recommend", params={"user_id": user})
            assert recommended.status_code == 200 and recommended.json()["request_id"]
        redis_process.start()  # empty: what was written before died with it
        deadline = time.monotonic() + 10
        while (response := client.post("/feedback", json=click)).status_code != 202:
            assert response.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.1)
        metrics = client.get("/metrics").text
    stored = redis.Redis.from_url(redis_process.url, decode_responses=True).xrange(STREAM)
    assert [fields["user_id"] for _, fields in stored] == [user]
    assert metric_value(metrics, "feedback_write_errors_total") >= 8


def test_a_frozen_redis_never_gets_an_event_acknowledged_that_it_did_not_store(
    bundle_dir: Path, redis_process: RedisProcess
) -> None:
    users, item = bundle_users(bundle_dir), _item(bundle_dir)

    def make_request(worker: int, n: int) -> tuple[str, str, dict[str, Any] | None]:
        if worker % 2 == 0:
            return "GET", f"/recommend?user_id={users[n % len(users)]}&k=5", None
        # A user id that names the request, so the log can be checked event by event.
        return "POST", "/feedback", {"user_id": f"w{worker}-{n}", "item_id": item,
                                     "event": "click"}  # fmt: skip

    marks: dict[str, float] = {}
    assert redis_process.process is not None
    pid = redis_process.process.pid
    with uvicorn_server(_env(bundle_dir, redis_process.url)) as server:

        async def scenario() -> None:
            await asyncio.sleep(1.0)
            marks["frozen"] = time.monotonic()
            os.kill(pid, signal.SIGSTOP)  # alive but silent: every command times out
            await asyncio.sleep(1.5)
            os.kill(pid, signal.SIGCONT)
            marks["thawed"] = time.monotonic()
            await asyncio.sleep(2.0)

        outcomes = asyncio.run(
            drive_load(server.base_url, make_request, concurrency=4, during=scenario)
        )
    stored = redis.Redis.from_url(redis_process.url, decode_responses=True).xrange(STREAM)
    logged = {fields["user_id"] for _, fields in stored}
    acknowledged, refused = set(), 0
    for worker in (1, 3):
        mine = [o for o in outcomes if o.worker == worker]  # in the order they were sent
        for n, outcome in enumerate(mine):
            assert outcome.status in (202, 503), outcome
            if outcome.status == 202:
                acknowledged.add(f"w{worker}-{n}")
            else:
                refused += 1
    assert acknowledged - logged == set(), "an acknowledged event is missing from the log"
    assert refused > 0, "no feedback ran while Redis was frozen"
    late = [o for o in outcomes if o.worker % 2 == 1 and o.started > marks["thawed"] + 1.0]
    assert late and all(o.status == 202 for o in late), "feedback did not recover"
    recommends = [o for o in outcomes if o.worker % 2 == 0]
    assert recommends and all(o.status == 200 for o in recommends)
    during = [o for o in recommends if marks["frozen"] + 0.1 < o.started < marks["thawed"]]
    assert during, "no /recommend ran while Redis was frozen"
    assert max(o.finished - o.started for o in during) < 1.0
