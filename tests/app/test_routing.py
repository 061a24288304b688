"""Sticky A/B routing: stability, split proportions, salt, run-time changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.routing import BUCKETS, ABRouter, bucket_of
from tests.app.conftest import Reference

USERS = [f"user-{n}" for n in range(20_000)]


def test_assignment_is_sticky_across_router_instances() -> None:
    first = ABRouter(student_percent=50, salt="s1")
    second = ABRouter(student_percent=50, salt="s1")
    assert [first.assign(u) for u in USERS[:500]] == [second.assign(u) for u in USERS[:500]]
    assert all(first.assign("same") == first.assign("same") for _ in range(10))


@pytest.mark.parametrize("percent", [0, 10, 30, 50, 90, 100])
def test_split_follows_the_percentage(percent: float) -> None:
    router = ABRouter(student_percent=percent, salt="split")
    share = sum(router.assign(u) == "student" for u in USERS) / len(USERS)
    # 20,000 users: the binomial standard deviation is at most 0.35 points.
    assert abs(share - percent / 100) < 0.015


def test_buckets_cover_the_range_uniformly() -> None:
    buckets = [bucket_of(u, salt="b") for u in USERS]
    assert min(buckets) >= 0 and max(buckets) < BUCKETS
    tenths = [0] * 10
    for bucket in buckets:
        tenths[bucket * 10 // BUCKETS] += 1
    assert max(tenths) - min(tenths) < 0.1 * len(USERS) / 10


def test_a_new_salt_reshuffles_users() -> None:
    router = ABRouter(student_percent=50, salt="a")
    before = [router.assign(u) for u in USERS[:2000]]
    router.update(salt="b")
    after = [router.assign(u) for u in USERS[:2000]]
    changed = sum(x != y for x, y in zip(before, after, strict=True)) / len(before)
    assert 0.35 < changed < 0.65
    assert router.config.student_percent == 50


def test_raising_the_percentage_only_moves_teacher_users() -> None:
    router = ABRouter(student_percent=20, salt="grow")
    before = {u: router.assign(u) for u in USERS[:3000]}
    router.update(student_percent=60)
    assert all(router.assign(u) == "student" for u, v in before.items() if v == "student")


def test_service_routes_each_user_stickily(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(ab_student_percent=50, ab_salt="svc")
    router = ABRouter(student_percent=50, salt="svc")
    for user in reference.users[:20]:
        variants = {
            client.get("/recommend", params={"user_id": user, "k": 2}).json()["variant"]
            for _ in range(3)
        }
        assert variants == {router.assign(user)}
        rating = client.post(
            "/predict_rating", json={"user_id": user, "item_id": reference.items[0]}
        ).json()
        assert rating["variant"] == router.assign(user)


@pytest.mark.parametrize(("percent", "variant"), [(0, "teacher"), (100, "student")])
def test_extreme_percentages_send_everyone_one_way(
    make_client: Callable[..., TestClient], reference: Reference, percent: int, variant: str
) -> None:
    client = make_client(ab_student_percent=percent)
    seen = {
        client.get("/recommend", params={"user_id": u, "k": 1}).json()["variant"]
        for u in reference.users
    }
    assert seen == {variant}


def test_header_overrides_the_assignment(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(ab_student_percent=0)
    user, item = reference.users[0], reference.items[0]
    assert (
        client.get("/recommend", params={"user_id": user}, headers={"X-Variant": "student"}).json()[
            "variant"
        ]
        == "student"
    )
    assert (
        client.post(
            "/predict_rating",
            json={"user_id": user, "item_id": item},
            headers={"X-Variant": "student"},
        ).json()["variant"]
        == "student"
    )
    response = client.post(
        "/predict_rating", json={"user_id": user, "item_id": item}, headers={"X-Variant": "both"}
    )
    assert response.status_code == 422
