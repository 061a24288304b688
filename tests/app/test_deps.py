"""The routes get services and state through the dependencies of app/api/deps.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fastapi import Request
from fastapi.testclient import TestClient

from app.api.deps import Scoring, VariantChooser, get_scoring
from app.main import create_app
from app.routing import ABRouter
from tests.app.conftest import Reference, metric_value, settings_for
from tests.helpers import error_body


def test_every_route_answers_503_before_the_lifespan_has_run() -> None:
    client = TestClient(create_app(settings_for(admin_token="tok", bench_floor_enabled=True)))
    not_started = {"detail": "service not started"}
    for response in (
        client.get("/readyz"),
        client.get("/metrics"),
        client.get("/recommend", params={"user_id": "1"}),
        client.post("/predict_rating", json={"user_id": "1", "item_id": "1"}),
    ):
        assert response.status_code == 503
        assert error_body(response) == not_started
    assert client.get("/healthz").json() == {"status": "ok"}
    # The gated routes are closed until the lifespan has put the settings on app.state.
    assert client.get("/admin/routing", headers={"Authorization": "Bearer tok"}).status_code == 404
    assert client.get("/_bench/floor").status_code == 404


def test_without_a_bundle_the_routes_answer_503_and_readyz_says_loading(
    client: TestClient, reference: Reference
) -> None:
    client.app.state.services.holder.current = None  # type: ignore[attr-defined]
    user, item = reference.users[0], reference.items[0]
    for response in (
        client.get("/recommend", params={"user_id": user}),
        client.post("/predict_rating", json={"user_id": user, "item_id": item}),
    ):
        assert response.status_code == 503
        assert error_body(response) == {"detail": "no model bundle loaded"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "loading", "cache": {"backend": "memory", "status": "up"}}
    # Refused before a variant was chosen: no assignment counted.
    assert metric_value(client, "ab_assignments_total") == 0


def test_an_overridden_variant_chooser_decides_the_variant(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    """The handlers take the variant chooser from their dependency, so overriding it
    (FastAPI's dependency_overrides) changes whom every request goes to."""
    client = make_client(ab_student_percent=0)
    app = client.app
    everyone_student = ABRouter(student_percent=100, salt="test")
    metrics = app.state.services.metrics  # type: ignore[attr-defined]

    async def scoring(request: Request) -> Scoring:
        chooser = VariantChooser(request, everyone_student, metrics)
        return replace(await get_scoring(request), choose_variant=chooser)

    app.dependency_overrides[get_scoring] = scoring  # type: ignore[attr-defined]
    user, item = reference.users[0], reference.items[0]
    assert client.get("/recommend", params={"user_id": user}).json()["variant"] == "student"
    answer = client.post("/predict_rating", json={"user_id": user, "item_id": item}).json()
    assert answer["variant"] == "student"
    assert metric_value(client, "ab_assignments_total", variant="student") == 2
    assert metric_value(client, "ab_assignments_total", variant="teacher") == 0


def test_a_refused_request_counts_no_assignment(client: TestClient, reference: Reference) -> None:
    user = reference.users[0]
    missing = client.post("/predict_rating", json={"user_id": user, "item_id": "no-such-item"})
    assert missing.status_code == 404
    assert client.get("/recommend", params={"user_id": user, "k": 0}).status_code == 422
    assert metric_value(client, "ab_assignments_total") == 0
    assert (
        metric_value(
            client,
            "http_request_duration_seconds_count",
            route="/predict_rating",
            status="404",
            variant="none",
        )
        == 1
    )
