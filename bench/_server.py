"""Start the service under uvicorn on a free loopback port and stop it again."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_REPO_ROOT = Path(__file__).resolve().parents[1]
# Sets the CPU affinity before uvicorn starts, so that every worker it forks inherits it.
_PINNED_UVICORN = (
    "import os, sys, runpy\n"
    "cpus = os.environ.pop('BENCH_SERVER_CPUS', '')\n"
    "if cpus:\n"
    "    os.sched_setaffinity(0, {int(c) for c in cpus.split(',')})\n"
    "sys.argv = ['uvicorn', *sys.argv[1:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""


def wait_ready(
    base_url: str, *, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"server at {base_url} not ready after {timeout_s:.0f} s ({last})")


def _stop(process: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    # The server runs in its own session: signal its group so that workers go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


@contextlib.contextmanager
def uvicorn_server(
    env: Mapping[str, str],
    *,
    workers: int = 1,
    cpus: frozenset[int] | None = None,
    ready_timeout_s: float = 120.0,
    log_dir: Path | None = None,
) -> Iterator[RunningServer]:
    """Run `uvicorn app.main:app` with `env` added to this process's environment."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-srv-")))
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        if workers > 1:
            # prometheus-client's multiprocess mode needs an empty directory per server.
            metrics_dir = workdir / "prometheus"
            metrics_dir.mkdir()
            full_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if cpus:
            full_env["BENCH_SERVER_CPUS"] = ",".join(str(c) for c in sorted(cpus))
        log_path = (log_dir or workdir) / f"uvicorn-{port}.log"
        command = [
            sys.executable, "-c", _PINNED_UVICORN, "app.main:app",
            "--host", HOST, "--port", str(port), "--workers", str(workers),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=_REPO_ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = RunningServer(host=HOST, port=port, process=process, log_path=log_path)
        try:
            wait_ready(server.base_url, timeout_s=ready_timeout_s, process=process)
        except (RuntimeError, TimeoutError) as exc:
            _stop(process)
            raise RuntimeError(f"{exc}\n--- server log ---\n{server.log_tail()}") from exc
        logger.info("server ready", extra={"port": port, "workers": workers})
        try:
            yield server
        finally:
            _stop(process)
