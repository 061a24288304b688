"""What the held-back-data benchmarks (bench.refit, bench.batch) share: their splits, their
process pool and their output files.

A fold's training ratings lose a tenth first (`CHECK_SEED`; the test fold is never read);
the teacher's own 90/10 selection split is then drawn from the rest, as `train_teacher`
draws it, and models are scored on the held-back tenth.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported by the worker processes only
    from training.data import Dataset, Ratings
    from training.train import TeacherConfig

CHECK_SEED = 1  # the teacher's own validation split uses seed 0

log = logging.getLogger("bench.heldout")
Task = TypeVar("Task")


def held_back_splits(
    ds: Dataset, data_dir: Path, fold: str, teacher: TeacherConfig
) -> tuple[Ratings, Ratings, Ratings, Ratings]:
    """(train, check, fit, valid): the fold's training ratings less the held-back tenth
    `check`, and `train` split the teacher's way into `fit` and `valid`."""
    from training.data import holdout, make_split  # noqa: PLC0415

    train, check = holdout(make_split(ds, split=fold, data_dir=data_dir).train, seed=CHECK_SEED)
    fit, valid = holdout(train, fraction=teacher.valid_fraction, seed=teacher.seed)
    return train, check, fit, valid


def run_pool(
    run_one: Callable[[Task], dict[str, Any]], tasks: Sequence[Task], jobs: int
) -> list[dict[str, Any]]:
    """`run_one` over `tasks` in `jobs` fresh (spawned) processes, results in task order."""
    with multiprocessing.get_context("spawn").Pool(max(1, jobs)) as pool:
        return pool.map(run_one, tasks, chunksize=1)


def write_outputs(out: Path, payload: dict[str, Any], markdown: str) -> None:
    """OUT.json (the rows, for re-rendering and checks) and OUT.md (the report)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    log.info("wrote %s", out.with_suffix(".md"))
