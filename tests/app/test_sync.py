"""Several workers in step: routing shared through Redis, reload on a moved symlink."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from app.routing import ROUTING_KEY
from tests.app.conftest import Reference, copy_bundle

AUTH = {"Authorization": "Bearer tok"}


def _wait_for(condition: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _variants(client: TestClient, users: list[str]) -> set[str]:
    return {
        client.get("/recommend", params={"user_id": u, "k": 1}).json()["variant"] for u in users
    }


def test_routing_change_reaches_every_worker(
    make_client: Callable[..., TestClient], reference: Reference, redis_url: str
) -> None:
    settings = {
        "redis_url": redis_url,
        "admin_token": "tok",
        "ab_student_percent": 0,
        "routing_sync_seconds": 0.1,
    }
    worker_a, worker_b = make_client(**settings), make_client(**settings)
    users = reference.users[:30]
    assert _variants(worker_b, users) == {"teacher"}

    response = worker_a.put("/admin/routing", json={"student_percent": 100}, headers=AUTH)
    assert response.json()["shared"] is True
    assert _wait_for(
        lambda: worker_b.get("/admin/routing", headers=AUTH).json()["student_percent"] == 100.0
    )
    assert _variants(worker_b, users) == {"student"}

    # A worker started later routes like the others from its first request.
    late = make_client(**settings)
    assert late.get("/admin/routing", headers=AUTH).json()["student_percent"] == 100.0


def test_malformed_shared_config_is_ignored(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).set(ROUTING_KEY, b'{"student_percent": 400, "salt": "x"}')
    client = make_client(
        redis_url=redis_url, admin_token="tok", ab_student_percent=25, routing_sync_seconds=0.1
    )
    time.sleep(0.3)
    assert client.get("/admin/routing", headers=AUTH).json()["student_percent"] == 25.0


def test_routing_change_without_redis_is_local(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        redis_url="redis://127.0.0.1:1/0", admin_token="tok", breaker_failure_threshold=1
    )
    response = client.put("/admin/routing", json={"student_percent": 70}, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"student_percent": 70.0, "salt": "ab-v1", "shared": False}


def test_moving_the_current_link_reloads(
    make_client: Callable[..., TestClient], reference: Reference, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    copy_bundle(reference.dir, models, version="w-1")
    copy_bundle(reference.dir, models, version="w-2")
    broken = copy_bundle(reference.dir, models, version="w-3")
    (broken / "items.json").write_text("[]")
    current = models / "current"
    current.symlink_to("w-1")
    client = make_client(model_dir=current, model_watch_seconds=0.1)

    def version() -> str:
        return str(client.get("/readyz").json()["model_version"])

    assert version() == "w-1"
    (models / "next").symlink_to("w-2")
    (models / "next").replace(current)
    assert _wait_for(lambda: version() == "w-2")
    user = reference.users[0]
    assert client.get("/recommend", params={"user_id": user}).json()["model_version"] == "w-2"

    (models / "next").symlink_to("w-3")
    (models / "next").replace(current)
    time.sleep(0.5)  # several watch periods: the broken bundle is refused, w-2 serves on
    assert version() == "w-2"
    assert client.get("/recommend", params={"user_id": user}).status_code == 200
