"""Teacher components trained in parallel processes: the same models as one by one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.component_pool import resolve_jobs, usable_cpus
from training.data import Dataset, load_dataset, make_split
from training.train import TeacherConfig, train_component, train_teacher


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


def test_two_processes_train_the_same_teacher_as_one(
    dataset: Dataset, synthetic_ml100k: Path
) -> None:
    train = make_split(dataset, split="u1", data_dir=synthetic_ml100k).train
    # The refit trains every component a second time, through the pool as well.
    config = replace(TeacherConfig(progress=False, threads=1, seed=3).quick(), refit_full=True)
    one, one_report = train_teacher(dataset, train, config=replace(config, jobs=1))
    two, two_report = train_teacher(dataset, train, config=replace(config, jobs=2))
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for name, info in one_report["components"].items():
        assert two_report["components"][name]["head_epochs"] == info["head_epochs"]
        assert two_report["components"][name]["curves"] == info["curves"]
    assert two_report["ensemble"]["fitted"] == one_report["ensemble"]["fitted"]


def test_job_count() -> None:
    assert resolve_jobs(5, threads=1, tasks=3) == 3
    assert resolve_jobs(2, threads=1, tasks=3) == 2
    # Two or more CPUs: a process per component, so that none trains alone at the end.
    assert resolve_jobs(0, threads=1, tasks=3) == (3 if usable_cpus() >= 2 else 1)
    # Torch's default threads take every core: one process.
    assert resolve_jobs(0, threads=0, tasks=3) == 1
    assert resolve_jobs(0, threads=usable_cpus() + 1, tasks=3) == 1


@pytest.mark.slow
def test_a_compiled_step_trains_like_the_eager_one(
    dataset: Dataset, synthetic_ml100k: Path
) -> None:
    """torch.compile changes how the loss is computed, not what: the same curves up to
    float rounding (which is why it is opt-in and part of the run key)."""
    train = make_split(dataset, split="u1", data_dir=synthetic_ml100k).train
    config = replace(TeacherConfig().quick().mf, epochs=2)
    fm, tables = dataset.feature_map, dataset.tables
    _, eager = train_component("mf", fm, tables, train, config=config, seed=0, progress=False)
    _, compiled = train_component(
        "mf", fm, tables, train, config=config, seed=0, progress=False, compile_step=True
    )
    for a, b in zip(eager["curves"], compiled["curves"], strict=True):
        assert a.keys() == b.keys()
        for key in ("loss", "mse", "rank"):
            assert b[key] == pytest.approx(a[key], rel=1e-3), key


# Run as a script: a pool of one worker, which reports its pid and then sleeps.
_PARENT = """
import os, time
from training.component_pool import worker_pool
if __name__ == "__main__":
    pool = worker_pool(1, threads=1)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 300)
    time.sleep(300)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert _running(worker)
        parent.send_signal(signal.SIGKILL)  # no clean-up runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker)
    finally:
        parent.kill()
