"""The service as users run it: a uvicorn process, and gunicorn with two workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.conftest import Reference, copy_bundle

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
Server = Callable[[list[str], dict[str, str]], subprocess.Popen[bytes]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(bundle: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        {
            "MODEL_DIR": str(bundle),
            "ORT_PROVIDERS": "CPUExecutionProvider",
            "ORT_INTRA_OP_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("server did not become ready")


@pytest.fixture
def server() -> Iterator[Server]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def test_uvicorn_process_serves_the_contract(
    server: Server, reference: Reference, redis_url: str
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = server(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        _env(reference.dir, REDIS_URL=redis_url, ADMIN_TOKEN="tok"),
    )
    _wait_ready(process, url)
    with httpx.Client(base_url=url, timeout=10) as client:
        user = reference.users[0]
        first = client.get("/recommend", params={"user_id": user, "k": 5})
        second = client.get("/recommend", params={"user_id": user, "k": 5})
        assert first.status_code == second.status_code == 200
        assert (first.json()["cached"], second.json()["cached"]) == (False, True)
        assert first.headers["content-type"] == "application/json"
        rating = client.post(
            "/predict_rating", json={"user_id": int(user), "item_id": reference.items[0]}
        )
        assert rating.status_code == 200 and 1 <= rating.json()["rating"] <= 5
        assert client.get("/recommend", params={"user_id": user, "k": 0}).status_code == 422
        assert (
            client.post(
                "/predict_rating", content=b"{oops", headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
        assert client.get("/admin/routing").status_code == 401
        assert (
            client.get("/admin/routing", headers={"Authorization": "Bearer tok"}).status_code == 200
        )
        assert "http_request_duration_seconds_bucket" in client.get("/metrics").text
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=30)[0].decode()
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in output
    assert '"msg":"service ready"' in output
    assert "Traceback" not in output


def test_a_corrupt_bundle_stops_start_up(
    server: Server, reference: Reference, tmp_path: Path
) -> None:
    bad = copy_bundle(reference.dir, tmp_path, version="bad")
    (bad / "popular.json").write_text("[]")
    process = server(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(_free_port())], _env(bad)
    )
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode != 0
    assert "sha256 mismatch for 'popular.json'" in output


def test_gunicorn_workers_share_metrics(
    server: Server, reference: Reference, tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    multiproc = tmp_path / "prom"
    process = server(
        [sys.executable, "-m", "gunicorn", "-c", "app/gunicorn_conf.py", "app.main:app"],
        _env(
            reference.dir,
            BIND=f"127.0.0.1:{port}",
            WEB_CONCURRENCY="2",
            PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        ),
    )
    _wait_ready(process, url)
    n_requests = 30
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(n_requests):
            user = reference.users[n % len(reference.users)]
            assert client.get("/recommend", params={"user_id": user}).status_code == 200
        # New connections so that the requests spread over both workers.
        for _ in range(20):
            with httpx.Client(base_url=url, timeout=10) as fresh:
                fresh.get("/healthz")
        # Files are named <type>_<pid>.db: one pid per worker that wrote metrics.
        pids = {p.stem.rsplit("_", 1)[-1] for p in multiproc.glob("*.db")}
        text = client.get("/metrics").text
    total = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_request_duration_seconds_count"
        and sample.labels.get("route") == "/recommend"
    )
    assert total == n_requests
    assert len(pids) == 2
    info = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "model_info" and s.value == 1
    ]
    assert {s.labels["variant"] for s in info} == {"teacher", "student"}
