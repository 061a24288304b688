"""What the held-back-data benchmarks (bench.refit, bench.batch, bench.student --holdout)
share: their command-line arguments, their splits, their process pool and their outputs.

A fold's training ratings lose a tenth first (`CHECK_SEED`; the test fold is never read);
the teacher's own 90/10 selection split is then drawn from the rest, as `train_teacher`
draws it, and models are scored on the held-back tenth.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported by the worker processes only
    from training.data import Dataset, Ratings
    from training.train import TeacherConfig

ROOT = Path(__file__).resolve().parent.parent
CHECK_SEED = 1  # the teacher's own validation split uses seed 0
COMPONENTS = ("mf", "xdeepfm", "autoint")
METRICS = ("rmse", "ndcg@10", "recall@10")

log = logging.getLogger("bench.heldout")
Task = TypeVar("Task")


def component_parser(
    doc: str | None, *, folds: str, jobs: int, out: str
) -> argparse.ArgumentParser:
    """The arguments every per-component benchmark takes; `out` names its results file."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k folder")
    parser.add_argument("--folds", default=folds, help="comma-separated folds")
    parser.add_argument("--components", default=",".join(COMPONENTS))
    parser.add_argument("--jobs", type=int, default=jobs, help="runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="the --quick teacher (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    return parser


def parse_components(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments plus `fold_list` and `component_order` (the slowest component
    first, so that a pool's last task is a short one); unknown components are a usage error."""
    args = parser.parse_args(argv)
    args.fold_list = [f.strip() for f in args.folds.split(",") if f.strip()]
    names = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = sorted(set(names) - set(COMPONENTS))
    if unknown:
        parser.error(f"unknown components {unknown}; known: {list(COMPONENTS)}")
    args.component_order = sorted(names, key=("xdeepfm", "autoint", "mf").index)
    return args


def hold_back(train: Ratings) -> tuple[Ratings, Ratings]:
    """A fold's training ratings as (the rest, the held-back tenth)."""
    from training.data import holdout  # noqa: PLC0415

    return holdout(train, seed=CHECK_SEED)


def held_back_splits(
    ds: Dataset, data_dir: Path, fold: str, teacher: TeacherConfig
) -> tuple[Ratings, Ratings, Ratings, Ratings]:
    """(train, check, fit, valid): the fold's training ratings less the held-back tenth
    `check`, and `train` split the teacher's way into `fit` and `valid`."""
    from training.data import holdout, make_split  # noqa: PLC0415

    train, check = hold_back(make_split(ds, split=fold, data_dir=data_dir).train)
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
