"""Shadow scoring: agreement measures by hand, the other variant's real list through the
app, and a full queue that drops work without touching the responses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from app.feedback import FeedbackLoop
from app.metrics import Metrics
from app.shadow import RedisShadowSink, ShadowJob, ShadowScorer, agreement, rank_correlation
from tests.app.conftest import Reference, metric_value

ADMIN = {"Authorization": "Bearer loop-token"}


def test_rank_correlation_by_hand() -> None:
    assert rank_correlation(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert rank_correlation(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    # Common items a, b, d: served ranks 0, 1, 2; shadow order d, a, b gives ranks 1, 2, 0;
    # d^2 = 1 + 1 + 4 = 6, rho = 1 - 6 * 6 / (3 * 8) = -0.5.
    assert rank_correlation(["a", "b", "c", "d"], ["x", "d", "a", "y", "b"]) == -0.5
    assert rank_correlation(["a", "b"], ["a", "z"]) is None


def test_agreement_by_hand() -> None:
    result = agreement(["a", "b", "c", "d"], ["b", "a", "e", "f"], [4.0, 3.5, 3.0, 2.0],
                       [3.5, 3.5, 3.5, 3.0])  # fmt: skip
    assert result.overlap == 0.5
    assert result.rank_correlation == -1.0
    assert result.rating_diff == pytest.approx((0.5 + 0 + 0.5 + 1.0) / 4)


@pytest.fixture
def shadow_client(
    make_client: Callable[..., TestClient], loop_redis_url: str
) -> Callable[..., TestClient]:
    def make(**overrides: Any) -> TestClient:
        return make_client(
            redis_url=loop_redis_url, admin_token="loop-token", shadow_percent=100, **overrides
        )

    return make


def _shadow(client: TestClient) -> dict[str, Any]:
    return client.get("/admin/experiment", headers=ADMIN).json()["shadow"]


def _wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_shadow_compares_with_the_other_variants_real_list(
    shadow_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = shadow_client()
    users, k = reference.users[:3], 8
    overlaps, diffs = [], []
    for user in users:
        lists = {}
        for variant in ("teacher", "student"):
            body = client.get(
                "/recommend", params={"user_id": user, "k": k}, headers={"X-Variant": variant}
            ).json()
            assert body["cached"] is False
            lists[variant] = body["items"]
        ids = {v: [i["item_id"] for i in items] for v, items in lists.items()}
        overlap = len(set(ids["teacher"]) & set(ids["student"])) / k
        overlaps += [overlap, overlap]
        for served, other in (("teacher", "student"), ("student", "teacher")):
            pairs = [{"user_id": user, "item_id": i} for i in ids[served]]
            theirs = client.post(
                "/predict_rating", json={"pairs": pairs}, headers={"X-Variant": other}
            ).json()["ratings"]
            shown = [i["rating"] for i in lists[served]]
            diffs.append(float(np.mean(np.abs(np.array(shown) - np.array(theirs)))))
    _wait_for(lambda: _shadow(client)["scored"] == 2 * len(users))
    shadow = _shadow(client)
    assert shadow["percent"] == 100 and shadow["dropped"] == 0 and shadow["failed"] == 0
    assert shadow["mean_overlap_at_k"] == pytest.approx(np.mean(overlaps))
    assert shadow["mean_abs_rating_diff"] == pytest.approx(np.mean(diffs), abs=2e-4)
    assert metric_value(client, "shadow_jobs_total", outcome="scored") == 6
    assert metric_value(client, "shadow_overlap_at_k_count", variant="teacher") == 3
    # A cached answer is not shadowed again.
    client.get("/recommend", params={"user_id": users[0], "k": k}, headers={"X-Variant": "teacher"})
    time.sleep(0.3)
    assert _shadow(client)["scored"] == 6


def test_a_full_queue_drops_work_and_counts_it(
    shadow_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = shadow_client(shadow_queue_size=2)
    loop: FeedbackLoop = client.app.state.loop  # type: ignore[attr-defined]
    assert loop.shadow is not None
    loop.shadow.stop()  # a worker that has fallen behind: nothing leaves the queue
    users = reference.users[:7]
    for user in users:
        response = client.get("/recommend", params={"user_id": user, "k": 5})
        assert response.status_code == 200 and response.json()["cached"] is False
    assert metric_value(client, "shadow_jobs_total", outcome="dropped") == 5
    assert metric_value(client, "shadow_jobs_total", outcome="scored") == 0
    loop.shadow.start()  # it catches up with what was queued and reports the drops
    _wait_for(lambda: _shadow(client)["scored"] == 2)
    shadow = _shadow(client)
    assert shadow["dropped"] == 5 and shadow["failed"] == 0


def test_a_failing_job_is_counted_and_the_worker_goes_on(
    loop_redis_url: str, make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(redis_url=loop_redis_url)
    state = client.app.state.services.holder.get()  # type: ignore[attr-defined]
    metrics = Metrics()
    sink = RedisShadowSink(loop_redis_url, timeout=1.0)
    scorer = ShadowScorer(queue_size=4, metrics=metrics, sink=sink)
    served = [reference.items[0], reference.items[1]]
    job = ShadowJob(state=state, experiment="exp-t", served_variant="teacher", user=1, k=2,
                    exclude_seen=True, extra_exclude=None, served_items=served,
                    served_ratings=[3.0, 3.0])  # fmt: skip
    bad = ShadowJob(state=state, experiment="exp-t", served_variant="teacher", user=10**6, k=2,
                    exclude_seen=True, extra_exclude=None, served_items=served,
                    served_ratings=[3.0, 3.0])  # fmt: skip
    assert scorer.run(bad) is None
    assert scorer.run(job) is not None
    counts = redis.Redis.from_url(loop_redis_url, decode_responses=True).hgetall(
        "recsys:exp:exp-t:counts"
    )
    assert counts["shadow:failed"] == "1" and counts["shadow:n"] == "1"
    sink.close()
