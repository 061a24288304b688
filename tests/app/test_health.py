"""Liveness, readiness, metrics exposition and the benchmark floor endpoint."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Reference, metric_value
from tests.helpers import error_body


def test_healthz_and_readyz(client: TestClient, reference: Reference) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["model_version"] == reference.version
    assert body["variants"]["teacher"] == {
        "file": "teacher.onnx",
        "provider": "CPUExecutionProvider",
    }
    assert body["variants"]["student"]["file"] == "student.onnx"


def test_metrics_follow_the_contract(client: TestClient, reference: Reference) -> None:
    user, item = reference.users[0], reference.items[0]
    client.get("/recommend", params={"user_id": user}, headers={"X-Variant": "student"})
    client.get("/recommend", params={"user_id": reference.users[1]})
    client.post(
        "/predict_rating", json={"user_id": user, "item_id": item}, headers={"X-Variant": "teacher"}
    )
    client.get("/recommend", params={"user_id": user, "k": 0})

    assert (
        metric_value(
            client,
            "http_request_duration_seconds_count",
            route="/recommend",
            method="GET",
            status="200",
            variant="student",
        )
        == 1
    )
    assert (
        metric_value(
            client,
            "http_request_duration_seconds_count",
            route="/recommend",
            status="422",
            variant="none",
        )
        == 1
    )
    assert (
        metric_value(
            client,
            "http_request_duration_seconds_count",
            route="/predict_rating",
            status="200",
            variant="teacher",
        )
        == 1
    )
    assert (
        metric_value(
            client,
            "model_inference_seconds_count",
            variant="teacher",
            endpoint="predict_rating",
            provider="CPUExecutionProvider",
        )
        == 1
    )
    assert metric_value(client, "model_inference_seconds_count", endpoint="recommend") == 2
    assert metric_value(client, "cache_requests_total", result="miss") == 2
    # Only the request without the override header was assigned by the router.
    assert metric_value(client, "ab_assignments_total") == 1
    for variant in ("teacher", "student"):
        assert (
            metric_value(
                client,
                "model_info",
                variant=variant,
                version=reference.version,
                provider="CPUExecutionProvider",
            )
            == 1
        )
    text = client.get("/metrics").text
    assert "# TYPE http_request_duration_seconds histogram" in text
    assert "# TYPE model_inference_seconds histogram" in text


def test_student_int8_setting_picks_the_int8_file(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(student_model="student_int8")
    expected = (
        "student.int8.onnx" if "student_int8" in reference.manifest["models"] else "student.onnx"
    )
    assert client.get("/readyz").json()["variants"]["student"]["file"] == expected


def test_bench_floor_only_when_enabled(
    make_client: Callable[..., TestClient], client: TestClient, reference: Reference
) -> None:
    assert client.get("/_bench/floor").status_code == 404
    # Closed, the route answers like an unknown path: not a 422 for a bad query.
    assert error_body(client.get("/_bench/floor", params={"n": 500})) == {"detail": "Not Found"}
    bench = make_client(bench_floor_enabled=True)
    floor = bench.get("/_bench/floor", params={"n": 10})
    assert floor.status_code == 200
    real = bench.get("/recommend", params={"user_id": reference.users[0], "k": 10})
    assert set(floor.json()) == set(real.json())
    assert len(floor.json()["items"]) == 10
    # Same shape and about the same size as a real answer.
    assert abs(len(floor.content) - len(real.content)) < 0.3 * len(real.content)
    assert bench.get("/_bench/floor", params={"n": 101}).status_code == 422


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_head_like_get(client: TestClient, path: str) -> None:
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.content == b""
    assert list(client.get("/openapi.json").json()["paths"][path]) == ["get"]


def test_head_recommend_is_refused(client: TestClient, reference: Reference) -> None:
    # It would run the model and, with the closed loop, record an impression nobody saw.
    response = client.head("/recommend", params={"user_id": reference.users[0]})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
