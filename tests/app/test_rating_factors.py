"""The student rates known users from its rating factors, as its rating graph does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.metrics import Metrics
from app.state import ServingState, load_state
from contract.errors import BundleError
from contract.layout import sha256_file
from contract.rating_factors import rating_factor_files
from tests.app.conftest import Reference, copy_bundle


def _state(client: TestClient) -> ServingState:
    return client.app.state.services.holder.get()  # type: ignore[attr-defined,no-any-return]


def _pairs(reference: Reference, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    users = rng.integers(1, len(reference.users) + 1, n).astype(np.int64)
    items = rng.integers(1, len(reference.items) + 1, n).astype(np.int64)
    return users, items


def test_only_the_student_has_rating_factors(client: TestClient, reference: Reference) -> None:
    models = reference.manifest["models"]
    assert "rating_factors" in models["student"]
    assert "rating_factors" not in models["teacher"]
    assert "rating_factors" not in models.get("student_int8", {})
    state = _state(client)
    assert state.runners["student"].factors is not None
    assert state.runners["teacher"].factors is None


def test_factored_ratings_equal_the_rating_graphs(client: TestClient, reference: Reference) -> None:
    state = _state(client)
    runner = state.runners["student"]
    users, items = _pairs(reference, 200)
    factored = runner.rate_known(users, items)
    assert factored is not None
    bundle = state.bundle
    graph = runner.run(
        user=users,
        item=items,
        user_feats=bundle.user_feats[users],
        item_feats=bundle.item_feats[items],
        item_genres=bundle.item_genres[items],
    )
    np.testing.assert_allclose(factored, graph, atol=1e-4)
    # Over HTTP too: /predict_rating's known pairs against the ONNX file, run independently.
    pairs = [
        {"user_id": reference.users[u - 1], "item_id": reference.items[i - 1]}
        for u, i in zip(users[:20].tolist(), items[:20].tolist(), strict=True)
    ]
    body = client.post("/predict_rating", json={"pairs": pairs}, headers={"X-Variant": "student"})
    assert body.status_code == 200
    want, _ = reference.run("student", users[:20], items[:20])
    np.testing.assert_allclose(body.json()["ratings"], want, atol=2e-4)


def test_a_batch_with_an_unknown_user_goes_through_the_graph(client: TestClient) -> None:
    runner = _state(client).runners["student"]
    assert runner.rate_known(np.array([0, 1], np.int64), np.array([1, 2], np.int64)) is None
    assert runner.rate_known(np.array([1, 2], np.int64), np.array([1, 2], np.int64)) is not None


def test_a_factor_matrix_of_the_wrong_shape_stops_the_load(
    reference: Reference, tmp_path: Path
) -> None:
    bundle = copy_bundle(reference.dir, tmp_path, version=reference.version)
    path = bundle / rating_factor_files("student")["users"]
    np.save(path, np.load(path)[:-1])  # one user short
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["models"]["student"]["rating_factors"]["users"]["sha256"] = sha256_file(path)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"student.rating_users.npy is float32"):
        load_state(bundle, metrics=Metrics(), providers=["CPUExecutionProvider"])


def test_rating_factors_above_their_memory_limit_leave_known_users_to_the_graph(
    client: TestClient, reference: Reference, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="app.state"):
        capped = load_state(
            reference.dir, metrics=Metrics(), providers=["CPUExecutionProvider"],
            rating_factors_mb=0.0,
        )  # fmt: skip
    assert capped.runners["student"].factors is None
    assert any("rating factors not loaded" in r.getMessage() for r in caplog.records)
    users, items = _pairs(reference, 50)
    assert capped.runners["student"].rate_known(users, items) is None
    feats = capped.bundle.user_feats[users]
    graph = capped._rate("student", user=users, item=items, user_feats=feats)
    factored = _state(client)._rate("student", user=users, item=items, user_feats=feats)
    np.testing.assert_allclose(graph, factored, atol=1e-4)
