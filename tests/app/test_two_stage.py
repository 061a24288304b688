"""Two-stage /recommend: exact retrieval returns what the full pair graph over the whole
catalogue would, ANN retrieval agrees with it, and both drop seen items."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.inference import CPU, TowerRunner
from tests.app.conftest import Reference, metric_value


def _full_graph_top(reference: Reference, model: str, user: int, k: int) -> list[str]:
    """Top k of the pair graph run over every item the user has not rated (the old path)."""
    n = len(reference.items)
    items = np.arange(1, n + 1)
    _, score = reference.run(model, np.full(n, user), items)
    seen = {reference.items.index(i) for i in reference.seen(user)}
    order = sorted((j for j in range(n) if j not in seen), key=lambda j: (-score[j], j))
    top = order[:k]
    # Ties within 1e-6 may come in either order: keep every item tied with the k-th.
    cut = score[top[-1]] - 1e-6
    return [reference.items[j] for j in order if score[j] >= cut]


@pytest.mark.parametrize("variant", ["teacher", "student"])
def test_exact_retrieval_equals_the_full_graph(
    make_client: Callable[..., TestClient], reference: Reference, variant: str
) -> None:
    client = make_client(retrieval="exact")
    for user in range(1, len(reference.users) + 1, 7):
        raw = reference.users[user - 1]
        body = client.get(
            "/recommend", params={"user_id": raw, "k": 10}, headers={"X-Variant": variant}
        ).json()
        got = [entry["item_id"] for entry in body["items"]]
        allowed = _full_graph_top(reference, variant, user, 10)
        assert len(got) == 10
        assert set(got) <= set(allowed)
        assert not set(got) & reference.seen(user)
        # Scores are the tower inner products; they match the pair graph's score output.
        _, score = reference.run(
            variant, np.full(10, user), [reference.items.index(i) + 1 for i in got]
        )
        np.testing.assert_allclose([e["score"] for e in body["items"]], score, atol=2e-4)
    assert metric_value(client, "retrieval_seconds_count", variant=variant, method="exact") > 0


def test_ann_and_exact_services_agree_on_the_top_item(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    exact = make_client(retrieval="exact")
    ann = make_client(retrieval="ann")
    agree = total = 0
    for raw in reference.users:
        params = {"user_id": raw, "k": 5}
        headers = {"X-Variant": "teacher"}
        a = exact.get("/recommend", params=params, headers=headers).json()["items"]
        b = ann.get("/recommend", params=params, headers=headers).json()["items"]
        seen = reference.seen(reference.users.index(raw) + 1)
        assert len(b) == len(a) and not {e["item_id"] for e in b} & seen
        agree += a[0]["item_id"] == b[0]["item_id"]
        total += 1
    assert agree / total >= 0.9
    assert metric_value(ann, "retrieval_seconds_count", variant="teacher", method="ann") > 0


def test_cold_start_goes_through_retrieval(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(retrieval="exact")
    fields = reference.feature_map["user_fields"]
    params = {"user_id": "someone-new", "k": 5, fields[0]["name"]: "25"}
    body = client.get("/recommend", params=params, headers={"X-Variant": "student"}).json()
    assert body["fallback"] == "cold_start" and len(body["items"]) == 5
    scores = [e["score"] for e in body["items"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("variant", ["teacher", "student"])
def test_precomputed_user_vectors_are_the_tower_outputs(reference: Reference, variant: str) -> None:
    retrieval = reference.manifest["models"][variant]["retrieval"]
    tower = TowerRunner(
        reference.dir / retrieval["user_tower"]["file"], name=variant, providers=[CPU]
    )
    dim = retrieval["items"]["dim"]
    rows = reference.user_feats.shape[0]
    assert not tower.precompute(reference.user_feats, dim=dim, max_bytes=rows * dim * 4 - 1)
    assert tower.table is None
    assert tower.precompute(reference.user_feats, dim=dim, max_bytes=rows * dim * 4)
    assert tower.table is not None and tower.table.shape == (rows, dim)
    for user in range(1, rows):
        row = reference.user_feats[user]
        np.testing.assert_allclose(
            tower.vector(user, row),
            tower.vectors(np.array([user]), row[None, :])[0],
            rtol=0,
            atol=1e-6,
        )
    # The cold-start user takes the request's feature row, never a table row.
    other = reference.user_feats[1]
    cold = tower.vectors(np.array([0]), other[None, :])[0]
    np.testing.assert_array_equal(tower.vector(0, other), cold)


def test_answers_do_not_depend_on_precomputed_user_vectors(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    precomputed = make_client(retrieval="exact")
    per_request = make_client(retrieval="exact", retrieval_user_vectors_mb=0)
    for variant in ("teacher", "student"):
        for raw in reference.users[::5]:
            params = {"user_id": raw, "k": 10}
            headers = {"X-Variant": variant}
            a = precomputed.get("/recommend", params=params, headers=headers).json()
            b = per_request.get("/recommend", params=params, headers=headers).json()
            assert a["items"] == b["items"] and len(a["items"]) == 10
