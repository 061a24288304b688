"""Gunicorn settings for several uvicorn workers with shared Prometheus metrics.

    PROMETHEUS_MULTIPROC_DIR=/tmp/prom gunicorn -c app/gunicorn_conf.py app.main:app

prometheus-client's multiprocess mode needs PROMETHEUS_MULTIPROC_DIR set before the
workers start, an empty directory at start-up, and dead workers marked as such.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from prometheus_client import multiprocess

# uvicorn.workers is deprecated in favour of the uvicorn-worker package; use it if present.
if importlib.util.find_spec("uvicorn_worker") is not None:
    from uvicorn_worker import UvicornWorker as _UvicornWorker
else:
    from uvicorn.workers import UvicornWorker as _UvicornWorker


class LimitedUvicornWorker(_UvicornWorker):
    """uvicorn's worker with the project's HTTP protocol: bounded request heads and a time
    limit to send one (app/http_protocol.py), as serve.sh's `--http` gives uvicorn."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "http": "app.http_protocol:HttpProtocol",
    }


bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "app.gunicorn_conf.LimitedUvicornWorker"
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        # Files left by an earlier run would be summed into this run's counters.
        path = Path(directory)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
