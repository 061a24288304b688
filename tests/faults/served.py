"""The service started the way the images start it: deploy/docker/serve.sh, on loopback.

For the fault tests whose behaviour lives in the server process (head limits, admission,
start-up errors, several workers): the script's uvicorn options are part of what is tested.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench._server import free_port
from tests.deploy.conftest import DEPLOY, REPO

SERVE_SH = DEPLOY / "docker" / "serve.sh"


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM to the process group, SIGKILL after 20 s; the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


def serve_env(bundle: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        {
            "HOST": "127.0.0.1",
            "MODEL_DIR": str(bundle),
            "REDIS_URL": "",
            "ORT_PROVIDERS": "CPUExecutionProvider",
            "ORT_INTRA_OP_THREADS": "1",
            "ADMIN_TOKEN": "",
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
            # serve.sh runs `uvicorn` and `python` from PATH: those of this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    env.update(overrides)
    return env


def start(env: dict[str, str], log_path: Path) -> Served:
    port = int(env.get("PORT") or free_port())
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["sh", str(SERVE_SH)],
            cwd=log_path.parent,
            env={**env, "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Served(process=process, port=port, log_path=log_path)


def wait_ready(served: Served, *, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise AssertionError(f"server exited with {served.process.returncode}:\n{served.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{served.base_url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {timeout_s} s:\n{served.log()[-4000:]}")


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path) -> Iterator[Served]:
    served = start(env, log_path)
    try:
        wait_ready(served)
        yield served
    finally:
        served.stop()
