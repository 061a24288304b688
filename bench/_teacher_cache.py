"""The teacher both benchmarks train, and where they keep it, so each fold trains once.

`teacher_config` is the one recipe of both, so a teacher saved by `bench.quality
--save-teachers` is the teacher `bench.student --teacher-cache` would have trained.
Teachers are kept as checkpoints (training/checkpoint.py); the file name carries the
teacher code's version (`checkpoint.code_version("teacher")`), so after a change to the
teacher's code the benchmarks train afresh instead of measuring a teacher the old code
trained, while a change to distillation alone keeps the cached teachers.
Imported lazily by bench.quality, whose parent process stays free of torch.
"""

from __future__ import annotations

from pathlib import Path

from training import checkpoint
from training.features import FeatureMap
from training.models.ensemble import EnsembleTeacher
from training.train import TeacherConfig


def teacher_config(*, seed: int, threads: int, quick: bool) -> TeacherConfig:
    config = TeacherConfig(seed=seed, threads=threads, progress=False)
    return config.quick() if quick else config


def teacher_cache_path(cache_dir: Path, fold: str, *, quick: bool, seed: int) -> Path:
    code = checkpoint.code_version("teacher")[:12]
    return (
        Path(cache_dir) / f"teacher-ml-100k-{fold}{'-quick' if quick else ''}-seed{seed}-{code}.pt"
    )


def save_teacher(
    teacher: EnsembleTeacher, path: Path, *, config: TeacherConfig, fm: FeatureMap
) -> None:
    checkpoint.save_teacher(teacher, path, config=config, fm=fm)


def load_teacher(path: Path, *, fm: FeatureMap | None = None) -> EnsembleTeacher:
    """The cached teacher; a checkpoint.CheckpointError when it cannot be used."""
    teacher = checkpoint.load_model(path, fm=fm, kind="ensemble")
    assert isinstance(teacher, EnsembleTeacher)
    return teacher
