"""Refusals from the request head, in process: X-Variant policy, body size, admin auth before
the body; and the error contract: a request id on every error, no Host echo, bounded labels."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Reference, metric_value
from tests.helpers import error_body

AUTH = {"Authorization": "Bearer tok"}


@pytest.mark.parametrize(
    ("policy", "headers", "status"),
    [
        ("allow", {}, 200),
        ("deny", {}, 403),
        ("deny", AUTH, 403),
        ("admin", {}, 403),
        ("admin", {"Authorization": "Bearer wrong"}, 403),
        ("admin", AUTH, 200),
    ],
)
def test_variant_override_policy(
    make_client: Callable[..., TestClient],
    reference: Reference,
    policy: str,
    headers: dict[str, str],
    status: int,
) -> None:
    client = make_client(variant_override=policy, admin_token="tok", ab_student_percent=0)
    user = reference.users[0]
    forced = client.get(
        "/recommend", params={"user_id": user}, headers={"X-Variant": "student", **headers}
    )
    assert forced.status_code == status, forced.text
    if status == 200:
        assert forced.json()["variant"] == "student"
    else:
        assert "X-Variant" in error_body(forced)["detail"]
    # Without the header, nobody is refused.
    assert client.get("/recommend", params={"user_id": user}).json()["variant"] == "teacher"


def test_body_over_the_limit_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=2048)
    body = b'{"pairs": [' + b" " * 4096 + b"]}"
    response = client.post(
        "/predict_rating", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "2048" in error_body(response)["detail"]

    def chunked() -> object:
        yield b'{"pairs": ['
        for _ in range(8):
            yield b" " * 1024
        yield b"]}"

    streamed = client.post(
        "/predict_rating", content=chunked(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413 and error_body(streamed)["detail"]


def test_admin_token_is_checked_before_the_body(make_client: Callable[..., TestClient]) -> None:
    client = make_client(admin_token="tok")
    # Unparseable bodies: without the token the answer is about the token, not the body.
    assert client.put("/admin/routing", content=b"{oops").status_code == 401
    wrong = client.put("/admin/routing", content=b"{oops", headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 403
    assert client.put("/admin/routing", content=b"{oops", headers=AUTH).status_code == 422


def test_every_error_carries_the_request_id(
    make_client: Callable[..., TestClient], reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    for response in (
        client.get("/no-such-path"),
        client.get("/recommend", params={"user_id": "1", "k": 0}),
        client.post("/predict_rating", json={"user_id": "1", "item_id": "no-such-item"}),
        client.delete("/recommend"),
    ):
        assert response.status_code >= 400
        assert error_body(response)["detail"]

    state = client.app.state.services.holder.get()  # type: ignore[attr-defined]

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(type(state), "recommend_known", broken)
    failed = client.get(
        "/recommend", params={"user_id": reference.users[0]}, headers={"X-Request-ID": "trace-500"}
    )
    assert failed.status_code == 500
    assert failed.headers["x-request-id"] == "trace-500"
    assert failed.json() == {"detail": "internal error", "request_id": "trace-500"}


def test_no_redirect_echoes_the_host(client: TestClient, reference: Reference) -> None:
    response = client.get(
        "/recommend/",
        params={"user_id": reference.users[0]},
        headers={"Host": "evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 404 and "location" not in response.headers


def test_unknown_methods_fold_into_one_label(client: TestClient) -> None:
    for method in ("PROPFIND", "BREW", "X-CUSTOM"):
        assert client.request(method, "/recommend").status_code == 405
    text = client.get("/metrics").text
    assert metric_value(client, "http_request_duration_seconds_count", method="OTHER") == 3
    assert "PROPFIND" not in text and "BREW" not in text
