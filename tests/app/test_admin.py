"""Admin routes: present only with a token, bearer auth, routing changes, reloads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Reference, copy_bundle, metric_value
from tests.helpers import error_body

AUTH = {"Authorization": "Bearer s3cret-token"}


@pytest.fixture
def admin(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(admin_token="s3cret-token", ab_student_percent=50, ab_salt="adm")


@pytest.mark.parametrize("token", [None, ""])
def test_admin_routes_absent_without_token(
    make_client: Callable[..., TestClient], token: str | None
) -> None:
    client = make_client(admin_token=token)
    unknown = client.get("/admin/no-such-route", headers=AUTH)
    assert unknown.status_code == 404
    # Exactly like an unknown path: no 401/405/422 that would tell the routes exist.
    for response in (
        client.get("/admin/routing", headers=AUTH),
        client.get("/admin/routing"),
        client.post("/admin/reload", headers=AUTH),
        client.delete("/admin/routing", headers=AUTH),
        client.put("/admin/routing", content=b"{not json", headers=AUTH),
    ):
        assert (response.status_code, error_body(response)) == (404, error_body(unknown))
    assert not any(p.startswith("/admin") for p in client.get("/openapi.json").json()["paths"])


def test_admin_routes_in_schema_with_token(admin: TestClient) -> None:
    paths = admin.get("/openapi.json").json()["paths"]
    assert {"/admin/routing", "/admin/reload"} <= set(paths)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic czNjcmV0LXRva2Vu"}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": "Bearer s3cret-token-longer"}, 403),
        (AUTH, 200),
    ],
)
def test_bearer_token_is_required(admin: TestClient, headers: dict[str, str], status: int) -> None:
    response = admin.get("/admin/routing", headers=headers)
    assert response.status_code == status
    if status != 200:
        assert response.json()["detail"]


def test_routing_can_be_read_and_changed(admin: TestClient, reference: Reference) -> None:
    assert admin.get("/admin/routing", headers=AUTH).json() == {
        "student_percent": 50.0,
        "salt": "adm",
    }
    response = admin.put("/admin/routing", json={"student_percent": 100}, headers=AUTH)
    # No Redis in this app: the change stays in this process.
    assert response.json() == {"student_percent": 100.0, "salt": "adm", "shared": False}
    variants = {
        admin.get("/recommend", params={"user_id": u, "k": 1}).json()["variant"]
        for u in reference.users
    }
    assert variants == {"student"}
    assert admin.put("/admin/routing", json={"salt": "other"}, headers=AUTH).json() == {
        "student_percent": 100.0,
        "salt": "other",
        "shared": False,
    }
    assert metric_value(admin, "ab_assignments_total", variant="student") == len(reference.users)


@pytest.mark.parametrize(
    "body",
    [
        {"student_percent": 101},
        {"student_percent": -1},
        {"salt": ""},
        {"student_percent": "half"},
        {"student_percent": True},
        {"student_percent": "10"},
        {"percent": 10},
    ],
)
def test_bad_routing_updates_are_422(admin: TestClient, body: dict[str, object]) -> None:
    response = admin.put("/admin/routing", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"]
    assert admin.get("/admin/routing", headers=AUTH).json()["student_percent"] == 50.0


def test_reload_swaps_to_a_new_bundle(
    admin: TestClient, reference: Reference, tmp_path: Path
) -> None:
    new = copy_bundle(reference.dir, tmp_path, version="test-v9")
    response = admin.post("/admin/reload", json={"model_dir": str(new)}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["model_version"], body["previous_version"]) == ("test-v9", reference.version)
    assert admin.get("/readyz").json()["model_version"] == "test-v9"
    user = reference.users[0]
    assert admin.get("/recommend", params={"user_id": user}).json()["model_version"] == "test-v9"
    metrics = admin.get("/metrics").text
    assert 'version="test-v9"' in metrics
    assert f'version="{reference.version}"' not in metrics


def test_reload_without_body_rereads_model_dir(
    make_client: Callable[..., TestClient], reference: Reference, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    copy_bundle(reference.dir, models, version="v-a")
    copy_bundle(reference.dir, models, version="v-b")
    (models / "current").symlink_to("v-a")
    client = make_client(model_dir=models / "current", admin_token="s3cret-token")
    assert client.get("/readyz").json()["model_version"] == "v-a"
    (models / "next").symlink_to("v-b")
    (models / "next").replace(models / "current")  # the atomic switch the exporter does
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["model_version"] == "v-b"


def _corrupt(bundle: Path) -> None:
    onnx = bundle / "teacher.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt, "sha256 mismatch"),
        (lambda b: (b / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda b: (b / "manifest.json").write_text(json.dumps({"version": "x"})), "invalid"),
        (lambda b: (b / "seen.npz").unlink(), "missing"),
    ],
)
def test_failed_reload_keeps_the_old_bundle(
    admin: TestClient,
    reference: Reference,
    tmp_path: Path,
    damage: Callable[[Path], object],
    reason: str,
) -> None:
    bad = copy_bundle(reference.dir, tmp_path, version="broken")
    damage(bad)
    response = admin.post("/admin/reload", json={"model_dir": str(bad)}, headers=AUTH)
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert admin.get("/readyz").json()["model_version"] == reference.version
    served = admin.get("/recommend", params={"user_id": reference.users[0]})
    assert served.status_code == 200 and served.json()["model_version"] == reference.version


def test_reload_of_a_missing_directory_is_refused(admin: TestClient, tmp_path: Path) -> None:
    response = admin.post("/admin/reload", json={"model_dir": str(tmp_path / "nope")}, headers=AUTH)
    assert response.status_code == 422
    assert "does not exist" in response.json()["detail"]


@pytest.mark.parametrize("model_dir", ["bad\u0000name", "x" * 5000])
def test_reload_of_an_impossible_path_is_refused_without_a_traceback(
    admin: TestClient, reference: Reference, model_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = admin.post("/admin/reload", json={"model_dir": model_dir}, headers=AUTH)
    assert response.status_code == 422
    assert "unusable" in response.json()["detail"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert admin.get("/readyz").json()["model_version"] == reference.version


def test_a_rebuilt_bundle_with_the_same_version_never_serves_old_cached_lists(
    make_client: Callable[..., TestClient], reference: Reference, tmp_path: Path, redis_url: str
) -> None:
    first = copy_bundle(reference.dir, tmp_path / "a", version="same-name")
    second = copy_bundle(reference.dir, tmp_path / "b", version="same-name")
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["training"]["rebuilt"] = True  # another build: another content hash
    (second / "manifest.json").write_text(json.dumps(manifest))
    client = make_client(model_dir=first, admin_token="s3cret-token", redis_url=redis_url)
    params = {"user_id": reference.users[0]}
    assert client.get("/recommend", params=params).json()["cached"] is False
    assert client.get("/recommend", params=params).json()["cached"] is True
    response = client.post("/admin/reload", json={"model_dir": str(second)}, headers=AUTH)
    assert response.status_code == 200
    assert client.get("/recommend", params=params).json()["cached"] is False
