"""Multiprocess gauges of dead workers are dropped; those of live ones are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.metrics import forget_dead_workers

_WRITE_GAUGE = (
    "from app.metrics import Metrics\n"
    "Metrics().set_model_info([('teacher', 'v-old', 'CPUExecutionProvider')])\n"
)


def test_only_dead_workers_gauges_are_forgotten(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    dead = subprocess.run(
        [sys.executable, "-c", _WRITE_GAUGE + "import os; print(os.getpid())"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    dead_pid = int(dead.stdout.strip())
    live = tmp_path / f"gauge_livemax_{os.getpid()}.db"
    live.write_bytes((tmp_path / f"gauge_livemax_{dead_pid}.db").read_bytes())
    (tmp_path / f"counter_{dead_pid}.db").write_bytes(b"")
    assert forget_dead_workers(str(tmp_path)) == [dead_pid]
    assert not (tmp_path / f"gauge_livemax_{dead_pid}.db").exists()
    assert live.exists() and (tmp_path / f"counter_{dead_pid}.db").exists()
