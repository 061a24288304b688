"""bench/gpu.sh, the bounded run on a lent GPU machine: it never runs past its budget."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _endless_python(tmp_path: Path) -> Path:
    """A Python that answers the script's one-line header and never finishes a step.

    Every step then runs into its limit whatever the machine's load, so the budget logic
    is what is tested, not how long pytest or torch take to import today.
    """
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\nif [ "$1" = "-c" ]; then echo stub; exit 0; fi\nexec sleep 600\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def test_every_step_is_cut_to_the_time_left_and_later_ones_are_skipped(tmp_path: Path) -> None:
    budget = 25  # the script keeps 15 s for its archive: the first step gets at most 10
    python = _endless_python(tmp_path)
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": str(python), "WORK": str(tmp_path / "w")}
    started = time.monotonic()
    subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out"), str(budget)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # The first step is killed at its limit (timeout, then SIGKILL 5 s later): the budget holds.
    assert time.monotonic() - started < budget + 10
    steps = (tmp_path / "out" / "steps.txt").read_text()
    limit = int(steps.split("test_device: limit ")[1].split("s")[0])
    assert 5 <= limit <= budget - 15
    assert "test_device: exit 124" in steps  # stopped by its limit, not finished
    assert "throughput: skipped" in steps
    assert "pipeline" not in steps  # no time for a pipeline run: not started at all
