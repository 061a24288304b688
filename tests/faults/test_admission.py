"""Admission control through serve.sh's real uvicorn: a flood of uncached teacher requests
is partly refused with 503 + Retry-After, never with another error, while cached answers
keep coming at once; and X-Variant can be restricted."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import bundle_users, drive_load, metric_value
from tests.faults.served import serve_env, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_uncached_flood_is_shed_and_cached_answers_stay_fast(
    bundle_dir: Path, tmp_path: Path
) -> None:
    users = bundle_users(bundle_dir)
    env = serve_env(
        bundle_dir,
        # One model run at a time and no queue: any overlap of two runs is refused.
        INFERENCE_CONCURRENCY="1",
        INFERENCE_QUEUE_MAX="0",
        INFERENCE_QUEUE_SECONDS="0",
        AB_STUDENT_PERCENT="0",  # everybody on the teacher
        CACHE_TTL_SECONDS="600",
    )

    def attack(worker: int, n: int) -> tuple[str, str, None]:
        # Distinct users and k: every request is a miss.
        user = users[(worker * 7 + n) % len(users)]
        return "GET", f"/recommend?user_id={user}&k={1 + (worker * 13 + n) % 100}", None

    cached_latencies: list[float] = []
    with serving(env, tmp_path / "server.log") as server:
        cached_user = users[0]
        warm = httpx.get(f"{server.base_url}/recommend?user_id={cached_user}&k=5", timeout=10)
        assert warm.status_code == 200

        async def probe_cached() -> None:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    response = await client.get(f"/recommend?user_id={cached_user}&k=5")
                    cached_latencies.append(time.monotonic() - started)
                    assert response.status_code == 200 and response.json()["cached"] is True
                    await asyncio.sleep(0.01)

        outcomes = asyncio.run(
            drive_load(server.base_url, attack, concurrency=16, during=probe_cached)
        )
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            shed = client.get(f"/recommend?user_id={users[1]}&k=77")  # after the flood: served
            assert shed.status_code == 200

    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 503}, statuses
    refused = [o for o in outcomes if o.status == 503]
    assert refused and any(o.status == 200 for o in outcomes)
    for outcome in refused[:20]:
        assert outcome.body is not None and outcome.body["request_id"]
        assert "busy" in outcome.body["detail"]
    assert metric_value(metrics, "inference_rejected_total") == len(refused)
    assert cached_latencies and statistics.median(cached_latencies) < 0.1


def test_x_variant_can_be_restricted_to_the_admin_token(bundle_dir: Path, tmp_path: Path) -> None:
    env = serve_env(bundle_dir, VARIANT_OVERRIDE="admin", ADMIN_TOKEN="tok")
    user = bundle_users(bundle_dir)[0]
    with (
        serving(env, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        forced = client.get(f"/recommend?user_id={user}", headers={"X-Variant": "teacher"})
        assert forced.status_code == 403 and "X-Variant" in forced.json()["detail"]
        allowed = client.get(
            f"/recommend?user_id={user}",
            headers={"X-Variant": "teacher", "Authorization": "Bearer tok"},
        )
        assert allowed.status_code == 200 and allowed.json()["variant"] == "teacher"
        # Without the header the sticky split applies to anybody.
        assert client.get(f"/recommend?user_id={user}").status_code == 200
