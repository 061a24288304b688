"""Importing the serving package: no torch, no training package, no settings read and no
resources built (those belong to the lifespan)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import error_body, modules_loaded_by

ROOT = Path(__file__).resolve().parents[2]


def test_import_app_main_loads_no_torch_and_no_training() -> None:
    assert modules_loaded_by("app.main", forbidden={"torch", "training"}) == []


def test_no_app_module_mentions_torch_or_training_imports() -> None:
    for path in (ROOT / "app").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(
                ("import torch", "from torch", "import training", "from training")
            ), f"{path}: {line}"


def test_import_reads_no_settings_and_builds_no_resources(tmp_path: Path) -> None:
    """Settings, Redis client, metrics and services come with the lifespan, not the import:
    the environment here is invalid (CACHE_TTL_SECONDS=0), Redis unroutable, MODEL_DIR
    missing, and the import must neither notice nor try to connect or open the bundle."""
    missing = tmp_path / "no-such-bundle"
    env = {
        **os.environ,
        "REDIS_URL": "redis://10.255.255.1:6379/0",
        "MODEL_DIR": str(missing),
        "CACHE_TTL_SECONDS": "0",
        "ADMIN_TOKEN": "tok",
    }
    code = (
        "import gc, sys, time\n"
        "events = []\n"
        "def hook(event, args):\n"
        "    if event == 'socket.connect' or (event == 'open' and str(args[0]).startswith("
        f"{str(missing)!r})):\n"
        "        events.append((event, repr(args)))\n"
        "sys.addaudithook(hook)\n"
        "started = time.perf_counter()\n"
        "import app.main\n"
        "elapsed = time.perf_counter() - started\n"
        "import redis\n"
        "assert not events, events\n"
        "assert vars(app.main.app.state) == {'_state': {}}, vars(app.main.app.state)\n"
        "assert not [o for o in gc.get_objects() if isinstance(o, redis.Redis)]\n"
        "print(round(elapsed, 3))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) < 30


def test_app_without_settings_reads_them_when_the_lifespan_starts(
    monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    from app.main import create_app  # noqa: PLC0415

    monkeypatch.setenv("MODEL_DIR", "/no/such/bundle")
    app = create_app()
    assert not hasattr(app.state, "services")
    # Changed after create_app: only the lifespan may have read it.
    for name, value in {
        "MODEL_DIR": str(bundle_dir),
        "REDIS_URL": "",
        "ADMIN_TOKEN": "tok",
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "ACCESS_LOG": "false",
        "BENCH_FLOOR_ENABLED": "false",
    }.items():
        monkeypatch.setenv(name, value)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        assert (
            client.get("/admin/routing", headers={"Authorization": "Bearer tok"}).status_code == 200
        )
        assert client.get("/admin/routing").status_code == 401
        assert client.get("/_bench/floor").status_code == 404
        assert "/admin/routing" in client.get("/openapi.json").json()["paths"]
    assert not hasattr(app.state, "services")

    # The same app object, started again without a token: the admin routes are gone.
    monkeypatch.delenv("ADMIN_TOKEN")
    with TestClient(app) as client:
        assert error_body(
            client.get("/admin/routing", headers={"Authorization": "Bearer tok"})
        ) == {"detail": "Not Found"}
        assert "/admin/routing" not in client.get("/openapi.json").json()["paths"]
