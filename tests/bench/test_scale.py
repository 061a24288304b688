"""bench/scale.py's measurement of a run: its whole process tree's memory, and its limit."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

from bench.scale import run_measured

# A parent holding ~60 MB that starts a child holding ~300 MB, as torchrun starts workers.
_TREE = """
import subprocess, sys, time
held = bytearray(60 * 2**20)
child = "import time; held = bytearray(300 * 2**20); time.sleep(0.6)"
subprocess.run([sys.executable, "-c", child], check=True)
"""


def test_memory_covers_the_children_of_the_run(tmp_path: Path) -> None:
    out = run_measured([sys.executable, "-c", _TREE], limit=60, log_path=tmp_path / "log")
    assert out["returncode"] == 0 and not out["timed_out"]
    # The parent alone never reaches 300 MB: the peak is the child's own.
    assert out["peak_rss_gb"] >= 0.3
    # Parent and child were resident at the same time.
    assert out["peak_tree_rss_gb"] >= out["peak_rss_gb"] + 0.05


def test_a_run_past_its_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.perf_counter()
    out = run_measured([sys.executable, "-c", script], limit=2, log_path=tmp_path / "log")
    assert out["timed_out"] and out["returncode"] != 0
    assert time.perf_counter() - started < 30
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the run's child outlived the limit"
        time.sleep(0.05)
