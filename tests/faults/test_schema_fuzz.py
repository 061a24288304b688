"""Schemathesis against the app's own OpenAPI schema, and a Hypothesis fuzzer of the scoring
paths: no generated input gives a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def api_schema(bundle_dir: Path) -> schemathesis.schemas.BaseSchema:
    # Admin routes mounted and authorised, so that reload and routing get fuzzed too.
    app = create_app(
        Settings(
            model_dir=bundle_dir,
            redis_url="",
            admin_token=TOKEN,
            ort_providers="CPUExecutionProvider",
            ort_intra_op_threads=1,
            access_log=False,
        )
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_on_any_generated_input(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )


@pytest.fixture(scope="module")
def fuzz_client(bundle_dir: Path) -> Iterator[tuple[TestClient, list[str], list[str]]]:
    settings = Settings(
        model_dir=bundle_dir,
        redis_url="",
        max_batch_pairs=50,
        ort_providers="CPUExecutionProvider",
        ort_intra_op_threads=1,
        access_log=False,
    )
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    ids = json.loads((bundle_dir / manifest["files"]["id_maps"]["file"]).read_text())
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, [str(u) for u in ids["users"]], [str(i) for i in ids["items"]]


def _ids(known: list[str]) -> st.SearchStrategy[str | int]:
    # Real ids (so that the scoring path runs), their integer forms, and arbitrary junk.
    return st.one_of(
        st.sampled_from(known),
        st.sampled_from(known).map(_as_int),
        st.text(max_size=12),
        st.integers(-(2**70), 2**70),
    )


def _as_int(raw: str) -> str | int:
    return int(raw) if raw.isdigit() else raw


@pytest.mark.timeout(300)
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_deep_paths_never_fail_with_5xx(
    fuzz_client: tuple[TestClient, list[str], list[str]], data: st.DataObject
) -> None:
    """The schema fuzzer rarely builds bodies that reach the models; this one mostly does."""
    client, users, items = fuzz_client
    user, item = data.draw(_ids(users)), data.draw(_ids(items))
    pairs = data.draw(
        st.lists(
            st.fixed_dictionaries({"user_id": _ids(users), "item_id": _ids(items)}),
            min_size=1,
            max_size=60,
        )
    )
    k = data.draw(st.integers(-5, 120))
    variant = data.draw(st.sampled_from([None, "teacher", "student", "bogus"]))
    headers = {"X-Variant": variant} if variant else {}
    answers = [
        client.post("/predict_rating", json={"user_id": user, "item_id": item}, headers=headers),
        client.post("/predict_rating", json={"pairs": pairs}, headers=headers),
        client.get("/recommend", params={"user_id": str(user), "k": k}, headers=headers),
    ]
    for response in answers:
        assert response.status_code in (200, 404, 413, 422), response.text[:300]
        if response.status_code != 200:
            assert response.json()["detail"], response.text[:300]
