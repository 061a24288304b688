"""What the held-back-data benchmarks (bench.refit, bench.batch, bench.negatives,
bench.student --holdout) share: their command-line arguments, their splits, one
component's run under changed settings, the pairing of each variant with its baseline,
their process pool and their outputs.

A fold's training ratings lose a tenth first (`CHECK_SEED`; the test fold is never read);
the teacher's own 90/10 selection split is then drawn from the rest, as `train_teacher`
draws it, and models are scored on the held-back tenth.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
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


def int_list(parser: argparse.ArgumentParser, flag: str, text: str, minimum: int) -> list[int]:
    """A comma-separated list of distinct whole numbers, each at least `minimum`; anything
    else is a one-line usage error naming `flag`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{flag}: whole numbers separated by commas, got {text!r}")
    if not values or min(values) < minimum:
        parser.error(f"{flag}: at least one value, each at least {minimum}")
    if len(set(values)) != len(values):
        parser.error(f"{flag}: each value once, got {text!r}")
    return values


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


def train_variant(
    data_dir: Path,
    fold: str,
    name: str,
    quick: bool,
    overrides: dict[str, Any],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Component `name` trained the teacher's way with its config's `overrides` on the
    selection split of `fold`, scored on the held-back tenth: the row every variant
    benchmark reports (wall seconds, epochs run and kept, the held-back metrics). `seed` is
    the teacher's: it draws the selection split and the component's initialisation, as a
    bench.quality seed does; the held-back tenth stays the same (`CHECK_SEED`)."""
    import torch  # noqa: PLC0415

    from training.data import load_dataset  # noqa: PLC0415
    from training.evaluate import evaluate_model  # noqa: PLC0415
    from training.train import TeacherConfig, train_component  # noqa: PLC0415

    torch.set_num_threads(1)
    ds = load_dataset(data_dir)
    fm = ds.feature_map
    teacher = TeacherConfig(seed=seed)
    teacher = teacher.quick() if quick else teacher
    config = replace(getattr(teacher, name), **overrides)
    component_seed = teacher.seed + COMPONENTS.index(name)  # as train_teacher seeds them
    train, check, fit, valid = held_back_splits(ds, data_dir, fold, teacher)
    started = time.perf_counter()
    model, info = train_component(
        name, fm, ds.tables, fit, config=config, valid=valid, seed=component_seed, progress=False
    )
    seconds = time.perf_counter() - started
    scores = evaluate_model(
        model, ds.tables, train=train, test=check, n_users=fm.n_users, n_items=fm.n_items
    )
    epochs_run = len(info["curves"])
    row = {
        "fold": fold,
        "seed": seed,
        "component": name,
        "seconds": seconds,
        "epochs_run": epochs_run,
        "epoch_seconds": seconds / max(epochs_run, 1),
        "head_epochs": [int(e) for e in info["head_epochs"]],
        **{m: float(scores[m]) for m in METRICS},
    }
    log.info("%s %s %s", name, overrides, row)
    return row


def paired_summary(rows: list[dict[str, Any]], axis: str, base: object) -> list[dict[str, Any]]:
    """Per component and value of `axis`: each figure's mean over the runs and, for the
    values other than `base`, the change against `base` on the same fold and seed (time as
    a ratio, metrics as differences, and in how many of those pairs the variant was
    better); `folds` counts the runs."""
    baseline = {_cell(r): r for r in rows if r[axis] == base}
    out = []
    for name in dict.fromkeys(r["component"] for r in rows):
        for value in dict.fromkeys(r[axis] for r in rows if r["component"] == name):
            mine = [r for r in rows if r["component"] == name and r[axis] == value]
            entry: dict[str, Any] = {"component": name, axis: value, "folds": len(mine)}
            for key in ("seconds", "epoch_seconds", "epochs_run", *METRICS):
                entry[key] = statistics.fmean(float(r[key]) for r in mine)
            paired = [(r, baseline[_cell(r)]) for r in mine if _cell(r) in baseline]
            if paired and value != base:
                entry.update(_changes(paired))
            out.append(entry)
    return out


def _cell(row: dict[str, Any]) -> tuple[str, int, str]:
    """What pairs a variant's run with its baseline's: fold, seed (0 for rows written
    before runs had seeds) and component."""
    return row["fold"], int(row.get("seed", 0)), row["component"]


def _changes(paired: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
    """Mean time ratio and metric differences of (variant, baseline) row pairs, and on how
    many pairs the variant was better (lower RMSE, higher NDCG and Recall)."""
    out = {"time_ratio": statistics.fmean(r["seconds"] / b["seconds"] for r, b in paired)}
    for m in METRICS:
        deltas = [r[m] - b[m] for r, b in paired]
        out[f"{m}_delta"] = statistics.fmean(deltas)
        out[f"{m}_better_on"] = sum(d < 0 if m == "rmse" else d > 0 for d in deltas)
    return out


def run_cells(row: dict[str, Any]) -> str:
    """A `train_variant` row's markdown cells: epochs run (kept: rating, ranking), seconds
    per epoch, seconds and the held-back metrics."""
    kept = ", ".join(str(e) for e in row["head_epochs"])
    metrics = " | ".join(f"{row[m]:.4f}" for m in METRICS)
    return (
        f"{row['epochs_run']} ({kept}) | {row['epoch_seconds']:.1f} | {row['seconds']:.0f} | "
        f"{metrics} |"
    )


def delta_table(totals: list[dict[str, Any]], axis: str, label: str) -> list[str]:
    """The markdown rows of `paired_summary`'s variants: time ratio and metric changes."""
    lines = [
        f"| component | {label} | time ratio | rmse | ndcg@10 | recall@10 |",
        "|---|---:|---:|---|---|---|",
    ]
    for t in totals:
        if "time_ratio" not in t:
            continue
        cells = [f"{t[f'{m}_delta']:+.4f} ({t[f'{m}_better_on']}/{t['folds']})" for m in METRICS]
        head = f"| {t['component']} | {t[axis]} | {t['time_ratio']:.2f} | "
        lines.append(head + " | ".join(cells) + " |")
    return lines


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
