"""The benchmarks' teacher cache: checkpoints keyed by the model code, stale ones retrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import student as bench_student
from bench._teacher_cache import load_teacher, teacher_cache_path
from training import checkpoint
from training.data import load_dataset, make_split


def test_cache_path_names_the_teacher_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    now = teacher_cache_path(Path("cache"), "u1", quick=True, seed=0)
    assert checkpoint.code_version("teacher")[:12] in now.name
    monkeypatch.setattr(checkpoint, "code_version", lambda scope="all": "0" * 64)
    assert teacher_cache_path(Path("cache"), "u1", quick=True, seed=0) != now


def test_cached_teacher_is_reused_and_a_stale_one_retrained(
    synthetic_ml100k: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = load_dataset(synthetic_ml100k)
    train = make_split(ds, split="u1", data_dir=synthetic_ml100k).train
    args = bench_student.parse_args(
        ["--teacher-cache", str(tmp_path), "--quick", "--threads", "1", "--folds", "u1"]
    )
    trained, seconds = bench_student.get_teacher(args, ds, train, "u1")
    path = teacher_cache_path(tmp_path, "u1", quick=True, seed=0)
    assert seconds > 0.0 and path.is_file()

    cached, seconds = bench_student.get_teacher(args, ds, train, "u1")
    assert seconds == 0.0
    for key, value in trained.state_dict().items():
        assert torch.equal(value, cached.state_dict()[key]), key

    stale = torch.load(path, weights_only=True)
    stale["code_version"] = "0" * 64
    torch.save(stale, path)
    with pytest.raises(checkpoint.StaleCheckpointError, match="0" * 64):
        load_teacher(path)
    with caplog.at_level("WARNING", logger="bench.student"):
        _, seconds = bench_student.get_teacher(args, ds, train, "u1")
    assert seconds > 0.0
    assert "not using the cached teacher" in caplog.text
    assert checkpoint.read_checkpoint(path)["code_version"] == checkpoint.code_version("teacher")
