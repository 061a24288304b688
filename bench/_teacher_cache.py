"""The teacher both benchmarks train, and where they keep it, so each fold trains once.

`teacher_config` is the one recipe of both, so a teacher saved by `bench.quality
--save-teachers` is the teacher `bench.student --teacher-cache` would have trained.
Imported lazily by bench.quality, whose parent process stays free of torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.train import TeacherConfig


def teacher_config(*, seed: int, threads: int, quick: bool) -> TeacherConfig:
    config = TeacherConfig(seed=seed, threads=threads, progress=False)
    return config.quick() if quick else config


def teacher_cache_path(cache_dir: Path, fold: str, *, quick: bool, seed: int) -> Path:
    return Path(cache_dir) / f"teacher-ml-100k-{fold}{'-quick' if quick else ''}-seed{seed}.pt"


def save_teacher(teacher: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(teacher, path)


def load_teacher(path: Path) -> nn.Module:
    # Only ever a checkpoint these benchmarks wrote, never a downloaded file.
    model: nn.Module = torch.load(path, weights_only=False)
    return model.eval()
