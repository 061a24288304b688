"""GET /recommend through the ASGI app, checked against direct onnxruntime runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Reference, metric_value

FIELDS = {"request_id", "user_id", "variant", "model_version", "items", "cached", "fallback"}


def test_known_user_gets_ranked_unseen_items(client: TestClient, reference: Reference) -> None:
    user_index = 3
    user = reference.users[user_index - 1]
    response = client.get(
        "/recommend", params={"user_id": user, "k": 7}, headers={"X-Variant": "teacher"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == FIELDS
    assert body["user_id"] == user
    assert body["variant"] == "teacher"
    assert body["model_version"] == reference.version
    assert body["fallback"] is None
    items = body["items"]
    assert len(items) == 7
    assert all(set(item) == {"item_id", "title", "score", "rating"} for item in items)
    ids = [item["item_id"] for item in items]
    assert len(set(ids)) == 7
    assert not set(ids) & reference.seen(user_index)
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    assert all(1.0 <= item["rating"] <= 5.0 for item in items)

    # The same ranking computed straight from the ONNX file, without the service.
    n = len(reference.items)
    catalogue = np.arange(1, n + 1)
    _, score = reference.run("teacher", np.full(n, user_index), catalogue)
    score[[reference.items.index(i) for i in reference.seen(user_index)]] = -np.inf
    expected = [reference.items[p] for p in np.argsort(-score, kind="stable")[:7]]
    assert ids == expected
    np.testing.assert_allclose(scores, np.sort(score)[::-1][:7], atol=1e-3)


def test_exclude_seen_false_can_return_seen_items(client: TestClient, reference: Reference) -> None:
    user_index = 5
    user = reference.users[user_index - 1]
    k = len(reference.items)
    body = client.get(
        "/recommend", params={"user_id": user, "k": min(k, 100), "exclude_seen": "false"}
    ).json()
    ids = {item["item_id"] for item in body["items"]}
    assert reference.seen(user_index) <= ids
    assert len(body["items"]) == min(k, 100)


def test_integer_looking_ids_and_strings_agree(client: TestClient, reference: Reference) -> None:
    user = reference.users[0]
    as_text = client.get(f"/recommend?user_id={user}&k=3", headers={"X-Variant": "student"})
    assert as_text.status_code == 200
    assert as_text.json()["user_id"] == user
    assert isinstance(as_text.json()["items"][0]["item_id"], str)


def test_unknown_user_without_demographics_gets_popular(
    client: TestClient, reference: Reference
) -> None:
    body = client.get("/recommend", params={"user_id": "no-such-user", "k": 5}).json()
    assert body["fallback"] == "popular"
    assert [item["item_id"] for item in body["items"]] == reference.popular[:5]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(1.0 <= item["rating"] <= 5.0 for item in body["items"])


@pytest.mark.parametrize(
    "demographics",
    [{"gender": ""}, {"gender": "  ", "zip": ""}, {"occupation": "astronaut", "gender": "?"}],
)
def test_demographics_that_name_nothing_known_get_popular(
    client: TestClient, reference: Reference, demographics: dict[str, str]
) -> None:
    params = {"user_id": "no-such-user", "k": 5, **demographics}
    body = client.get("/recommend", params=params).json()
    assert body["fallback"] == "popular"
    assert [item["item_id"] for item in body["items"]] == reference.popular[:5]


@pytest.mark.parametrize(
    ("query", "user"), [("user_id=%C3%A9", "\u00e9"), ("user_id=a+b%20c", "a b c")]
)
def test_query_strings_are_read_as_percent_encoded_utf8(
    client: TestClient, query: str, user: str
) -> None:
    body = client.get(f"/recommend?{query}&k=2").json()
    assert body["user_id"] == user


@pytest.mark.parametrize("query", ["user_id=%FF", "user_id=1&gender=%C3", "user_id=%ED%A0%80"])
def test_a_query_string_that_is_not_utf8_is_a_422(client: TestClient, query: str) -> None:
    response = client.get(f"/recommend?{query}")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("query: not UTF-8")


def test_unknown_user_with_demographics_gets_cold_start(
    client: TestClient, reference: Reference
) -> None:
    params = {
        "user_id": "new-user",
        "k": 6,
        "age": 30,
        "gender": "F",
        "occupation": "writer",
        "zip": "55455",
    }
    response = client.get("/recommend", params=params, headers={"X-Variant": "student"})
    assert response.status_code == 200
    body = response.json()
    assert body["fallback"] == "cold_start"
    assert len(body["items"]) == 6

    # Encode the demographics by the contract's rules and score with index 0 directly.
    row = []
    for field in reference.feature_map["user_fields"]:
        value = params.get(field["name"])
        if field["kind"] == "bucket":
            row.append(1 + sum(1 for edge in field["edges"] if edge <= value))
        else:
            text = str(value)[: field.get("length", 1)] if field["kind"] == "prefix" else value
            row.append(field["values"].index(text) + 1 if text in field["values"] else 0)
    n = len(reference.items)
    _, score = reference.run(
        "student",
        np.zeros(n),
        np.arange(1, n + 1),
        user_feats=np.tile(np.array(row, dtype=np.int64), (n, 1)),
    )
    expected = [reference.items[p] for p in np.argsort(-score, kind="stable")[:6]]
    assert [item["item_id"] for item in body["items"]] == expected


@pytest.mark.parametrize("k", ["0", "101", "-1", "ten", "1.5"])
def test_bad_k_is_a_clear_422(client: TestClient, reference: Reference, k: str) -> None:
    response = client.get("/recommend", params={"user_id": reference.users[0], "k": k})
    assert response.status_code == 422
    assert "k" in response.json()["detail"]


@pytest.mark.parametrize("params", [{}, {"user_id": ""}, {"user_id": "   "}])
def test_missing_user_id_is_a_clear_422(client: TestClient, params: dict[str, str]) -> None:
    response = client.get("/recommend", params=params)
    assert response.status_code == 422
    assert "user_id" in response.json()["detail"]


@pytest.mark.parametrize("user", ["99\t1", "1\n2", "a\x00b", "x\x7fz", "y\x85z"])
def test_a_user_id_with_a_control_character_is_a_422(client: TestClient, user: str) -> None:
    # A tab or line end would split the id into more fields or lines in the event export.
    response = client.get("/recommend", params={"user_id": user})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("query.user_id") and "control characters" in detail


def test_bad_variant_header_is_a_422(client: TestClient, reference: Reference) -> None:
    response = client.get(
        "/recommend", params={"user_id": reference.users[0]}, headers={"X-Variant": "champion"}
    )
    assert response.status_code == 422
    assert "X-Variant" in response.json()["detail"] or "x-variant" in response.json()["detail"]


def test_override_header_picks_the_model(client: TestClient, reference: Reference) -> None:
    user = reference.users[1]
    teacher = client.get(
        "/recommend", params={"user_id": user, "k": 5}, headers={"X-Variant": "teacher"}
    ).json()
    student = client.get(
        "/recommend", params={"user_id": user, "k": 5}, headers={"X-Variant": "student"}
    ).json()
    assert (teacher["variant"], student["variant"]) == ("teacher", "student")
    n = len(reference.items)
    _, score = reference.run("student", np.full(n, 2), np.arange(1, n + 1))
    best_unseen = [
        reference.items[p]
        for p in np.argsort(-score, kind="stable")
        if reference.items[p] not in reference.seen(2)
    ][:5]
    assert [item["item_id"] for item in student["items"]] == best_unseen


def test_responses_carry_a_request_id(client: TestClient, reference: Reference) -> None:
    response = client.get(
        "/recommend", params={"user_id": reference.users[0]}, headers={"X-Request-ID": "abc-123"}
    )
    assert response.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32


@pytest.mark.parametrize("redis", [False, True])
def test_a_hit_in_memory_stays_on_the_event_loop(
    make_client: Callable[..., TestClient],
    reference: Reference,
    redis_url: str,
    thread_hops: list[str],
    redis: bool,
) -> None:
    """Only a miss in process memory may go to a worker thread (Redis and the model block;
    without Redis, cheap model work runs on the loop: tests/app/test_inline.py)."""
    client = make_client(redis_url=redis_url if redis else "", inline_max_ms=0.0)
    thread_hops.clear()
    params = {"user_id": reference.users[0], "k": 4}
    first = client.get("/recommend", params=params).json()
    assert first["cached"] is False and thread_hops == ["get_or_compute"]
    second = client.get("/recommend", params=params).json()
    assert second["cached"] is True and second["items"] == first["items"]
    assert len(thread_hops) == 1, "a hit in memory must not take a thread hop"
    assert metric_value(client, "cache_local_hits_total") == 1
    assert metric_value(client, "cache_requests_total", result="hit") == 1
