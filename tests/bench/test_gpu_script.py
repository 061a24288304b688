"""bench/gpu.sh, the bounded run on a lent GPU machine: it never runs past its budget."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_step_is_cut_to_the_time_left_and_later_ones_are_skipped(tmp_path: Path) -> None:
    budget = 25  # the script keeps 15 s for its archive: the first step gets at most 10
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "WORK": str(tmp_path / "w")}
    started = time.monotonic()
    subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out"), str(budget)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # A step past its limit is killed (timeout, then 5 s later SIGKILL): the budget holds.
    assert time.monotonic() - started < budget + 10
    steps = (tmp_path / "out" / "steps.txt").read_text()
    limit = int(steps.split("test_device: limit ")[1].split("s")[0])
    assert 5 <= limit <= budget - 15
    assert "test_device: exit " in steps
    assert "throughput: skipped" in steps
    assert "pipeline" not in steps  # no time for a pipeline run: not started at all
