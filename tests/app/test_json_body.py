"""Strict JSON bodies: repeated keys, non-UTF-8, deep nesting, over-long integers and objects
of too many keys are 422s on every body route."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.api.json_body import parse_json
from tests.app.conftest import Reference


def test_parse_json_reads_what_python_reads_without_repeats() -> None:
    raw = b'{"pairs": [{"user_id": "1", "item_id": "2"}, {"user_id": "1", "item_id": "3"}]}'
    assert parse_json(raw) == json.loads(raw)
    assert parse_json(b'[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"user_id": "1", "item_id": "2", "user_id": "3"}', "duplicate key 'user_id'"),
        (b'{"pairs": [{"item_id": "1", "item_id": "2"}]}', "duplicate key 'item_id'"),
        (b'{"a": {"b": 1, "b": 1}}', "duplicate key 'b'"),
        (b'{"x": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"user_id": ' + b"1" * 5000 + b"}", "integer string conversion"),
        (json.dumps({str(n): 0 for n in range(65)}).encode(), "65 keys, at most 64"),
    ],
)
def test_parse_json_refuses_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        parse_json(raw)
    assert reason in caught.value.msg


def test_a_long_repeated_key_is_named_briefly() -> None:
    key = "k" * 10_000
    with pytest.raises(json.JSONDecodeError) as caught:
        parse_json(json.dumps({key: 1}).encode()[:-1] + f', "{key}": 2}}'.encode())
    assert len(caught.value.msg) < 100


def test_predict_rating_refuses_a_repeated_key(client: TestClient, reference: Reference) -> None:
    user, other, item = reference.users[0], reference.users[1], reference.items[0]
    raw = f'{{"user_id": "{user}", "item_id": "{item}", "user_id": "{other}"}}'.encode()
    response = client.post(
        "/predict_rating", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "malformed JSON body: duplicate key 'user_id'"
    # The same body without the repeat is answered.
    one = {"user_id": other, "item_id": item}
    assert client.post("/predict_rating", json=one).status_code == 200


def test_admin_bodies_refuse_a_repeated_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(admin_token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    before = client.get("/admin/routing", headers=auth).json()
    raw = b'{"student_percent": 10, "student_percent": 90}'
    response = client.put(
        "/admin/routing",
        content=raw,
        headers={"Content-Type": "application/json", **auth},
    )
    assert response.status_code == 422
    assert "duplicate key 'student_percent'" in response.json()["detail"]
    assert client.get("/admin/routing", headers=auth).json() == before
