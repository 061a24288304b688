"""Fixtures for the fault tests: an own redis-server that can be killed, uvicorn processes,
a second bundle for reloads, and a small concurrent load driver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench._server import free_port
from tests.helpers import copy_bundle
from tests.helpers import metric_total as metric_value

__all__ = ["copy_bundle", "metric_value"]

REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    """A redis-server of this test alone, on a fixed port so that it can come back there."""

    def __init__(self, workdir: Path) -> None:
        if REDIS_SERVER is None:
            pytest.fail("the fault tests need the redis-server binary on PATH")
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir),
             "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, not a polite shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def bundle_users(bundle: Path) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = json.loads((bundle / manifest["files"]["id_maps"]["file"]).read_text())
    return [str(u) for u in ids["users"]]


def bundle_version(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["version"])


def server_env(bundle: Path, **overrides: str) -> dict[str, str]:
    env = {
        "MODEL_DIR": str(bundle),
        "REDIS_URL": "",
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "ADMIN_TOKEN": "",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.update(overrides)
    return env


@dataclass(frozen=True)
class Outcome:
    worker: int
    started: float
    finished: float
    status: int  # 0 when the request raised
    body: dict[str, Any] | None
    error: str | None


RequestFactory = Callable[[int, int], tuple[str, str, dict[str, Any] | None]]


async def drive_load(
    base_url: str,
    make_request: RequestFactory,
    *,
    concurrency: int,
    during: Callable[[], Awaitable[None]],
    request_timeout_s: float = 10.0,
) -> list[Outcome]:
    """Closed-loop load from `concurrency` workers while `during()` runs; stops after it.

    `make_request(worker, n)` gives (method, path, json body or None) of the worker's n-th
    request. Every outcome is kept, so the test can check each one.
    """
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            method, path, body = make_request(index, n)
            n += 1
            started = time.monotonic()
            try:
                response = await client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                outcomes.append(Outcome(index, started, time.monotonic(), 0, None, repr(exc)))
                continue
            payload = None
            with contextlib.suppress(ValueError):
                payload = response.json()
            outcomes.append(
                Outcome(index, started, time.monotonic(), response.status_code, payload, None)
            )

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=request_timeout_s, limits=limits
    ) as client:
        tasks = [asyncio.create_task(worker(i, client)) for i in range(concurrency)]
        try:
            await during()
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return outcomes


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200]
