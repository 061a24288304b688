"""POST /predict_rating: single pairs, batches, and every kind of bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.errors import ERRORS_SHOWN
from tests.app.conftest import Reference
from tests.helpers import copy_bundle


def test_single_pair_matches_the_onnx_file(client: TestClient, reference: Reference) -> None:
    user, item = reference.users[4], reference.items[9]
    response = client.post(
        "/predict_rating", json={"user_id": user, "item_id": item}, headers={"X-Variant": "teacher"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user_id", "item_id", "rating", "variant", "model_version"}
    assert (body["user_id"], body["item_id"], body["variant"]) == (user, item, "teacher")
    assert body["model_version"] == reference.version
    rating, _ = reference.run("teacher", [5], [10])
    assert body["rating"] == pytest.approx(float(rating[0]), abs=1e-3)
    assert 1.0 <= body["rating"] <= 5.0


def test_integer_ids_are_accepted_and_returned_as_strings(
    client: TestClient, reference: Reference
) -> None:
    user, item = reference.users[0], reference.items[0]
    assert user.isdigit() and item.isdigit()
    as_int = client.post(
        "/predict_rating",
        json={"user_id": int(user), "item_id": int(item)},
        headers={"X-Variant": "student"},
    ).json()
    as_text = client.post(
        "/predict_rating", json={"user_id": user, "item_id": item}, headers={"X-Variant": "student"}
    ).json()
    assert as_int == as_text
    assert as_int["user_id"] == user and as_int["item_id"] == item


def test_unknown_user_is_predicted_by_the_cold_start_path(
    client: TestClient, reference: Reference
) -> None:
    item = reference.items[2]
    body = client.post(
        "/predict_rating",
        json={"user_id": "stranger", "item_id": item},
        headers={"X-Variant": "teacher"},
    ).json()
    rating, _ = reference.run("teacher", [0], [3])
    assert body["rating"] == pytest.approx(float(rating[0]), abs=1e-3)


def test_unknown_item_is_a_404_naming_it(client: TestClient, reference: Reference) -> None:
    response = client.post(
        "/predict_rating", json={"user_id": reference.users[0], "item_id": "no-such-item"}
    )
    assert response.status_code == 404
    assert "no-such-item" in response.json()["detail"]


def test_batch_keeps_request_order(client: TestClient, reference: Reference) -> None:
    rng = np.random.default_rng(7)
    users = rng.integers(1, len(reference.users) + 1, 25)
    items = rng.integers(1, len(reference.items) + 1, 25)
    pairs = [
        {"user_id": reference.users[u - 1], "item_id": reference.items[i - 1]}
        for u, i in zip(users, items, strict=True)
    ]
    pairs.append({"user_id": "stranger", "item_id": reference.items[0]})
    response = client.post(
        "/predict_rating", json={"pairs": pairs}, headers={"X-Variant": "student"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ratings", "variant", "model_version"}
    expected, _ = reference.run("student", [*users.tolist(), 0], [*items.tolist(), 1])
    np.testing.assert_allclose(body["ratings"], expected, atol=1e-3)
    singles = [
        client.post("/predict_rating", json=pair, headers={"X-Variant": "student"}).json()["rating"]
        for pair in pairs[:5]
    ]
    np.testing.assert_allclose(body["ratings"][:5], singles, atol=1e-6)


def test_batch_with_unknown_items_names_them(client: TestClient, reference: Reference) -> None:
    pairs = [
        {"user_id": reference.users[0], "item_id": reference.items[0]},
        {"user_id": reference.users[0], "item_id": "ghost-1"},
        {"user_id": reference.users[1], "item_id": "ghost-2"},
    ]
    response = client.post("/predict_rating", json={"pairs": pairs})
    assert response.status_code == 404
    assert "ghost-1" in response.json()["detail"] and "ghost-2" in response.json()["detail"]


def test_too_many_pairs_is_refused(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(max_batch_pairs=3)
    pair = {"user_id": reference.users[0], "item_id": reference.items[0]}
    assert client.post("/predict_rating", json={"pairs": [pair] * 3}).status_code == 200
    response = client.post("/predict_rating", json={"pairs": [pair] * 4})
    assert response.status_code == 422
    assert "at most 3" in response.json()["detail"]
    # Counted before the pairs are validated: the count, not the bad pairs, is reported.
    response = client.post("/predict_rating", json={"pairs": [{"user_id": [1]}] * 4})
    assert response.status_code == 422
    assert response.json()["detail"] == "pairs: 4 given, at most 3 per request"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"user_id": [1], "item_id": "1"}, "user_id"),
        ({"user_id": True, "item_id": "1"}, "user_id"),
        ({"user_id": "1", "item_id": 1.5}, "item_id"),
        ({"user_id": "1"}, "user_id and item_id"),
        ({}, "user_id and item_id"),
        ({"pairs": []}, "pairs"),
        ({"pairs": "nope"}, "pairs"),
        ({"pairs": [{"user_id": "1"}]}, "item_id"),
        ({"user_id": "1", "item_id": "1", "pairs": [{"user_id": "1", "item_id": "1"}]}, "not both"),
        ({"user_id": "1", "item_id": "1", "extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_wrong_types_give_a_clear_422(client: TestClient, body: object, needle: str) -> None:
    response = client.post("/predict_rating", json=body)
    assert response.status_code == 422
    assert needle in response.json()["detail"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b'{"user_id": "1", "item_id": ',
        b'{"user_id": "1", "item_id": "\xff"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,
        b'{"user_id": ' + b"1" * 5000 + b', "item_id": "1"}',  # over Python's digit limit
    ],
)
def test_malformed_json_is_a_clear_422(client: TestClient, raw: bytes) -> None:
    response = client.post(
        "/predict_rating", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "JSON" in detail or "body" in detail
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"user_id": "\\ud800", "item_id": "1"}', "user_id"),
        (b'{"pairs": [{"user_id": "\\udc00", "item_id": "1"}]}', "pairs.0.user_id"),
        (b'{"user_id": "1", "item_id": "1", "\\ud800": 1}', "unicode string"),
    ],
)
def test_lone_surrogates_are_a_clear_422(client: TestClient, raw: bytes, needle: str) -> None:
    # Python's JSON reader takes a lone surrogate escape; no UTF-8 encoder (hashing, Redis,
    # the answer) does.
    response = client.post(
        "/predict_rating", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "1\t5", "item_id": "1"}, "user_id"),
        ({"pairs": [{"user_id": "1", "item_id": "2\r\n3"}]}, "pairs.0.item_id"),
    ],
)
def test_ids_with_control_characters_are_a_422(
    client: TestClient, body: dict[str, object], field: str
) -> None:
    response = client.post("/predict_rating", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith(field) and "control characters" in detail


def test_a_wrong_batch_is_reported_by_its_first_wrong_pair(client: TestClient) -> None:
    good = {"user_id": "1", "item_id": "1"}
    response = client.post("/predict_rating", json={"pairs": [good, {"user_id": "1"}] * 50})
    assert response.status_code == 422
    assert response.json()["detail"] == "pairs.1.item_id: Field required"


def test_many_wrong_fields_are_named_up_to_a_limit_and_counted(client: TestClient) -> None:
    unknown = {f"extra{n}": 0 for n in range(30)}
    response = client.post("/predict_rating", json={"pairs": [{**unknown, "user_id": "1"}]})
    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == ERRORS_SHOWN
    assert body["detail"].startswith("pairs.0.item_id: Field required")
    assert body["detail"].endswith(f"and {31 - ERRORS_SHOWN} more errors")


def test_wrong_method_is_a_405(client: TestClient) -> None:
    assert client.get("/predict_rating").status_code == 405


def test_a_bundle_without_rating_graphs_rates_with_its_pair_graphs(
    make_client: Callable[..., TestClient], reference: Reference, tmp_path: Path
) -> None:
    # As written before rating graphs existed: no `rating_graph` entries, no such files.
    old = copy_bundle(reference.dir, tmp_path, version=reference.version)
    manifest = json.loads((old / "manifest.json").read_text())
    for entry in manifest["models"].values():
        (old / entry.pop("rating_graph")["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    current, before = make_client(), make_client(model_dir=old)
    pairs = [
        {"user_id": reference.users[u], "item_id": reference.items[i]}
        for u, i in ((0, 3), (4, 9), (7, 1), (11, 20))
    ]
    for variant in ("teacher", "student"):
        headers = {"X-Variant": variant}
        a = current.post("/predict_rating", json={"pairs": pairs}, headers=headers)
        b = before.post("/predict_rating", json={"pairs": pairs}, headers=headers)
        assert a.status_code == b.status_code == 200
        assert a.json()["ratings"] == b.json()["ratings"]
    ready = before.get("/readyz").json()["variants"]
    assert ready["teacher"]["file"] == "teacher.onnx"
