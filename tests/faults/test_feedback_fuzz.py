"""Schemathesis against the closed loop's routes with a real Redis (DB 13): no generated
body, batch or query gives a 5xx, and every 202 is in the event log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings

from app.config import Settings
from app.main import create_app
from tests.conftest import LOOP_REDIS_TEST_URL

TOKEN = "fuzz-token"
STREAM = "recsys:events"


@pytest.fixture(scope="module")
def loop_store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(LOOP_REDIS_TEST_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def loop_schema(bundle_dir: Path, loop_store: redis.Redis) -> schemathesis.schemas.BaseSchema:
    app = create_app(
        Settings(
            model_dir=bundle_dir,
            redis_url=LOOP_REDIS_TEST_URL,
            admin_token=TOKEN,
            feedback_batch_limit=20,
            ort_providers="CPUExecutionProvider",
            ort_intra_op_threads=1,
            access_log=False,
        )
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# The other routes are fuzzed by test_schema_fuzz.py.
schema = schemathesis.pytest.from_fixture("loop_schema").include(
    path_regex="^/(feedback|admin/experiment.*)$"
)


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_unlogged_acceptance(
    case: schemathesis.Case, loop_store: redis.Redis
) -> None:
    before = loop_store.xlen(STREAM)
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    if case.formatted_path == "/feedback":
        written = loop_store.xlen(STREAM) - before
        if response.status_code == 202:
            assert written == response.json()["accepted"] >= 1
        else:
            assert written == 0, "a refused request wrote events"
