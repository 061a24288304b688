"""Multi-process training: a real two-process `torchrun` pipeline on generated data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.datagen import write_ml100k
from training.bundle import verify_bundle
from training.distributed import World, shard

ROOT = Path(__file__).resolve().parents[2]


def test_shards_partition_the_permutation_like_distributed_sampler() -> None:
    perm = torch.tensor([5, 3, 0, 4, 1, 2, 6])
    parts = [shard(perm, World(rank, 2, "gloo")) for rank in range(2)]
    assert parts[0].tolist() == [5, 0, 1, 6]
    assert parts[1].tolist() == [3, 4, 2, 5]  # padded with the head: equal step counts
    assert torch.equal(shard(perm, World()), perm)
    assert set(torch.cat(parts).tolist()) == set(perm.tolist())


def _torchrun(data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training",
        "pipeline",
        "--data-dir",
        str(data),
        "--split",
        "u1",
        "--quick",
        "--out-dir",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        cmd, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_two_process_torchrun_writes_one_valid_bundle_and_resumes(tmp_path: Path) -> None:
    data = write_ml100k(tmp_path / "data", n_users=60, n_items=80, n_ratings=2000)
    out = tmp_path / "models"
    done = _torchrun(data, out)
    bundles = [p for p in out.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != "."]
    assert len(bundles) == 1  # rank 0 alone publishes
    assert done.stdout.strip() == str(bundles[0])  # and alone reports
    manifest = verify_bundle(out / "current")
    assert manifest["training"]["world_size"] == 2
    assert manifest["training"]["backend"] == "gloo"
    assert "rank 1 of 2 (gloo)" in done.stderr
    assert done.stderr.count("mf epoch 1:") == 2  # both ranks trained

    # Resume: the student and every later step are gone; the teacher checkpoint is reused
    # by both ranks and the student is trained again by both.
    (work,) = (out / ".work").iterdir()
    for step in ("student", "export", "evaluate", "report"):
        (work / f"{step}.json").unlink()
    resumed = _torchrun(data, out)
    assert resumed.stderr.count("teacher: done earlier, skipped") == 2
    assert resumed.stderr.count("student epoch 1/") >= 2
    manifest = verify_bundle(out / "current")
    assert manifest["training"]["world_size"] == 2
    teacher = json.loads((work / "teacher.json").read_text())
    assert teacher["info"]["components"]["mf"]["head_epochs"]
