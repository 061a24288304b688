"""Cheap model work on the event loop: when it runs there, and that it answers the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient


def _items(client: TestClient, user: str, variant: str) -> list[dict[str, Any]]:
    response = client.get(
        "/recommend", params={"user_id": user, "k": 7}, headers={"X-Variant": variant}
    )
    assert response.status_code == 200, response.text
    assert response.json()["cached"] is False
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_cheap_work_runs_on_the_loop_and_answers_as_a_thread_would(
    make_client: Callable[..., TestClient], thread_hops: list[str]
) -> None:
    inline = make_client(inline_max_ms=10_000.0, cache_max_entries=1)
    threaded = make_client(inline_max_ms=0.0, cache_max_entries=1)
    state = inline.app.state.services.holder.get()  # type: ignore[attr-defined]
    assert state.inline == {"teacher", "student"}
    assert threaded.app.state.services.holder.get().inline == frozenset()  # type: ignore[attr-defined]
    for variant in ("teacher", "student"):
        for user in ("1", "2", "3"):
            thread_hops.clear()
            on_loop = _items(inline, user, variant)
            assert thread_hops == []
            in_thread = _items(threaded, user, variant)
            assert thread_hops == ["get_or_compute"]
            assert on_loop == in_thread
    # The next miss of a key the loop computed is a hit: it was stored.
    again = inline.get(
        "/recommend", params={"user_id": "3", "k": 7}, headers={"X-Variant": "student"}
    )
    assert again.json()["cached"] is True


def test_a_redis_tier_keeps_the_work_off_the_loop(
    make_client: Callable[..., TestClient], thread_hops: list[str], redis_url: str
) -> None:
    client = make_client(inline_max_ms=10_000.0, redis_url=redis_url)
    thread_hops.clear()  # start-up work also goes to threads
    _items(client, "4", "student")
    assert thread_hops == ["get_or_compute"]  # the Redis look-up blocks


def test_without_a_free_slot_the_work_waits_in_a_thread(
    make_client: Callable[..., TestClient], thread_hops: list[str]
) -> None:
    client = make_client(
        inline_max_ms=10_000.0,
        inference_concurrency=1,
        inference_queue_max=0,
        inference_queue_seconds=0.05,
    )
    gate = client.app.state.services.admission  # type: ignore[attr-defined]
    thread_hops.clear()
    with gate.slot():  # all model capacity taken: the loop must not run the model either
        busy = client.get("/recommend", params={"user_id": "5"}, headers={"X-Variant": "student"})
    assert busy.status_code == 503
    assert thread_hops == ["get_or_compute"]
    assert _items(client, "5", "student")
