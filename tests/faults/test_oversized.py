"""Oversized bodies and batches are refused with 413 or 422 and a message, never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.faults.conftest import bundle_users

MAX_PAIRS = 50


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=bundle_dir,
        redis_url="",
        max_batch_pairs=MAX_PAIRS,
        ort_providers="CPUExecutionProvider",
        ort_intra_op_threads=1,
        access_log=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def pair(bundle_dir: Path) -> dict[str, str]:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    ids = json.loads((bundle_dir / manifest["files"]["id_maps"]["file"]).read_text())
    return {"user_id": bundle_users(bundle_dir)[0], "item_id": str(ids["items"][0])}


def _refused(response_status: int, body: dict[str, object]) -> str:
    assert response_status in (413, 422), (response_status, body)
    detail = body.get("detail")
    assert isinstance(detail, str) and detail, body
    return detail


@pytest.mark.timeout(60)
def test_batch_one_over_the_limit_is_refused_and_the_limit_itself_served(
    client: TestClient, pair: dict[str, str]
) -> None:
    at_limit = client.post("/predict_rating", json={"pairs": [pair] * MAX_PAIRS})
    assert at_limit.status_code == 200
    assert len(at_limit.json()["ratings"]) == MAX_PAIRS

    over = client.post("/predict_rating", json={"pairs": [pair] * (MAX_PAIRS + 1)})
    detail = _refused(over.status_code, over.json())
    assert str(MAX_PAIRS) in detail, detail


@pytest.mark.timeout(60)
def test_huge_batch_body_is_refused(client: TestClient, pair: dict[str, str]) -> None:
    # About 6 MB of JSON: far beyond any legal batch.
    response = client.post("/predict_rating", json={"pairs": [pair] * 150_000})
    _refused(response.status_code, response.json())


@pytest.mark.timeout(60)
def test_huge_malformed_body_is_refused(client: TestClient) -> None:
    body = b'{"pairs": [' + b"x" * (8 << 20)
    response = client.post(
        "/predict_rating", content=body, headers={"Content-Type": "application/json"}
    )
    _refused(response.status_code, response.json())


@pytest.mark.timeout(60)
def test_oversized_query_values_are_refused(client: TestClient) -> None:
    long_user = client.get("/recommend", params={"user_id": "u" * 10_000})
    _refused(long_user.status_code, long_user.json())
    huge_k = client.get("/recommend", params={"user_id": "1", "k": 10**30})
    _refused(huge_k.status_code, huge_k.json())
