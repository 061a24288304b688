"""Reloads: a good bundle swaps in under load without a failed request; a corrupt or
half-written one is refused with a reason while the old bundle keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from bench._server import uvicorn_server
from tests.faults.conftest import (
    bundle_users,
    bundle_version,
    copy_bundle,
    drive_load,
    failures,
    server_env,
)

TOKEN = "fault-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reload_under_load_switches_version_once_without_failures(
    bundle_dir: Path, tmp_path: Path
) -> None:
    old = bundle_version(bundle_dir)
    new_dir = copy_bundle(bundle_dir, tmp_path, version=f"{old}-reloaded")
    new = bundle_version(new_dir)
    users = bundle_users(bundle_dir)
    item = _first_item(bundle_dir)

    def make_request(worker: int, n: int) -> tuple[str, str, dict[str, str] | None]:
        user = users[(worker * 11 + n) % len(users)]
        if n % 2:
            return "POST", "/predict_rating", {"user_id": user, "item_id": item}
        return "GET", f"/recommend?user_id={user}&k=5", None

    marks: dict[str, float] = {}
    reload_answer: dict[str, object] = {}
    with uvicorn_server(server_env(bundle_dir, ADMIN_TOKEN=TOKEN)) as server:

        async def scenario() -> None:
            await asyncio.sleep(1.0)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as admin:
                marks["sent"] = time.monotonic()
                response = await admin.post(
                    "/admin/reload", json={"model_dir": str(new_dir)}, headers=AUTH
                )
                marks["answered"] = time.monotonic()
            reload_answer.update(status=response.status_code, body=response.json())
            await asyncio.sleep(1.0)

        outcomes = asyncio.run(
            drive_load(server.base_url, make_request, concurrency=4, during=scenario)
        )

    assert reload_answer["status"] == 200, reload_answer
    assert failures(outcomes) == [], f"failed requests: {failures(outcomes)[:5]}"
    versions = {o.body["model_version"] for o in outcomes if o.body}
    assert versions == {old, new}
    for o in outcomes:
        assert o.body is not None
        if o.finished < marks["sent"]:
            assert o.body["model_version"] == old, "new version served before the reload"
        if o.started > marks["answered"]:
            assert o.body["model_version"] == new, "old version served after the reload"
    # Each worker's requests are sequential: its versions must switch exactly once.
    for worker in range(4):
        seq = [
            o.body["model_version"]
            for o in sorted(outcomes, key=lambda o: o.started)
            if o.worker == worker and o.body
        ]
        switches = sum(1 for a, b in itertools.pairwise(seq) if a != b)
        assert switches == 1 and seq[0] == old and seq[-1] == new, (worker, seq)


def _first_item(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = json.loads((bundle / manifest["files"]["id_maps"]["file"]).read_text())
    return str(ids["items"][0])


@pytest.fixture
def admin_client(bundle_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=bundle_dir,
        redis_url="",
        admin_token=TOKEN,
        ort_providers="CPUExecutionProvider",
        ort_intra_op_threads=1,
        access_log=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rehash(bundle: Path) -> None:
    """Make the manifest agree with the files again, as a buggy exporter might."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in [*manifest["files"].values(), *manifest["models"].values()]:
        if isinstance(entry, dict) and "file" in entry:
            entry["sha256"] = hashlib.sha256((bundle / entry["file"]).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _half_written_onnx(bundle: Path) -> None:
    _truncate(bundle / "student.onnx")


def _half_written_onnx_rehashed(bundle: Path) -> None:
    _truncate(bundle / "student.onnx")
    _rehash(bundle)


def _no_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()


def _truncated_manifest(bundle: Path) -> None:
    _truncate(bundle / "manifest.json")


def _missing_file(bundle: Path) -> None:
    (bundle / "features.npz").unlink()


def _corrupt_npz_rehashed(bundle: Path) -> None:
    (bundle / "seen.npz").write_bytes(b"not an npz archive")
    _rehash(bundle)


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (how the bundle is damaged, a word the refusal must contain)
    "half-written onnx": (_half_written_onnx, "sha256"),
    "half-written onnx, manifest re-hashed": (_half_written_onnx_rehashed, "student"),
    "no manifest": (_no_manifest, "manifest"),
    "truncated manifest": (_truncated_manifest, "manifest"),
    "missing data file": (_missing_file, "features.npz"),
    "corrupt npz, manifest re-hashed": (_corrupt_npz_rehashed, "seen.npz"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_bundle_is_refused_and_old_model_keeps_serving(
    admin_client: TestClient, bundle_dir: Path, tmp_path: Path, corruption: str
) -> None:
    old = bundle_version(bundle_dir)
    damage, reason_word = CORRUPTIONS[corruption]
    broken = copy_bundle(bundle_dir, tmp_path, version=f"{old}-broken")
    damage(broken)
    user = bundle_users(bundle_dir)[0]

    response = admin_client.post("/admin/reload", json={"model_dir": str(broken)}, headers=AUTH)

    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert reason_word in detail, f"refusal does not say why: {detail!r}"
    served = admin_client.get(f"/recommend?user_id={user}&k=3")
    assert served.status_code == 200
    assert served.json()["model_version"] == old
    assert admin_client.get("/readyz").status_code == 200
