"""Where the quality and student benchmarks keep trained teachers, so each fold trains once.

Both benchmarks train the teacher with the same `TeacherConfig` (defaults, seed, no
progress bars), so a teacher saved by one is the teacher the other would have trained.
"""

from __future__ import annotations

from pathlib import Path


def teacher_cache_path(cache_dir: Path, fold: str, *, quick: bool, seed: int) -> Path:
    return Path(cache_dir) / f"teacher-ml-100k-{fold}{'-quick' if quick else ''}-seed{seed}.pt"
