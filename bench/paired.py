"""Paired comparison of two codes' bench.quality or bench.student runs, fold by fold and
seed by seed.

    python -m bench.paired --before B_SEED0.json B_SEED1.json --after A_SEED0.json A_SEED1.json
    python -m bench.paired --before RUN.json --after RUN.json --row "BEFORE ROW=AFTER ROW"
    python -m bench.paired --before OLD/student_results.json --after NEW/student_results.json

Runs of one seed on the same folds train on the same data splits, so the difference
after - before of each (fold, seed) cell removes the fold's own difficulty; what is left
is the change plus training noise. Per model and metric it reports the mean difference,
its standard deviation, and the 95% confidence interval of the mean (Student's t over the
cells), so that "no loss" is read as "a loss larger than the interval's low end is
excluded", not from one mean. `--row` compares one row of the `--before` runs with another
of the `--after` runs instead (one run's teacher with and without a change it measures on
the same trained models, say). A bench.student run gives its teacher, popularity and
student rows per cell, the student's with its ratios to the teacher (ndcg_ratio and
rmse_ratio, which issue 15's per-fold targets bound).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from bench._spread import spread

log = logging.getLogger("bench.paired")
METRICS = ("rmse", "recall@10", "ndcg@10", "rmse_ratio", "ndcg_ratio")
Cell = tuple[str, int]  # (fold, seed)


@dataclass(frozen=True)
class Paired:
    model: str
    metric: str
    n: int
    mean: float
    std: float
    low: float  # 95% confidence interval of the mean difference
    high: float
    lower_in: int  # cells where after < before
    higher_in: int  # cells where after > before


def cells(runs: Iterable[Mapping[str, Any]]) -> dict[Cell, Mapping[str, Mapping[str, float]]]:
    """Each (fold, seed) of the runs with its rows; a cell given twice is an error."""
    out: dict[Cell, Mapping[str, Mapping[str, float]]] = {}
    for run in runs:
        for entry in run["folds"] if "folds" in run else _student_entries(run):
            cell = (str(entry["fold"]), int(entry["seed"]))
            if cell in out:
                raise ValueError(f"fold {cell[0]} seed {cell[1]} appears twice")
            out[cell] = entry["rows"]
    return out


def _student_entries(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A bench.student result's side-by-side rows as cells; the student's row gains its
    ratios to the same cell's teacher."""
    by_cell: dict[Cell, dict[str, dict[str, Any]]] = {}
    for row in run["side_by_side"]:
        by_cell.setdefault((str(row["fold"]), int(row["seed"])), {})[row["model"]] = dict(row)
    for rows in by_cell.values():
        teacher, student = rows.get("teacher"), rows.get("student")
        if teacher is not None and student is not None:
            student["ndcg_ratio"] = student["ndcg@10"] / teacher["ndcg@10"]
            student["rmse_ratio"] = student["rmse"] / teacher["rmse"]
    return [{"fold": f, "seed": s, "rows": rows} for (f, s), rows in by_cell.items()]


def only_row(
    runs: Mapping[Cell, Mapping[str, Mapping[str, float]]], row: str, *, as_name: str
) -> dict[Cell, Mapping[str, Mapping[str, float]]]:
    """Each cell's row `row` alone, named `as_name`; a cell without it is an error."""
    out: dict[Cell, Mapping[str, Mapping[str, float]]] = {}
    for cell, rows in runs.items():
        if row not in rows:
            raise ValueError(f"fold {cell[0]} seed {cell[1]} has no row {row!r}")
        out[cell] = {as_name: rows[row]}
    return out


def compare(
    before: Mapping[Cell, Mapping[str, Mapping[str, float]]],
    after: Mapping[Cell, Mapping[str, Mapping[str, float]]],
    *,
    metrics: Sequence[str] = METRICS,
) -> list[Paired]:
    """after - before over the cells both hold, per model both report and metric."""
    shared = sorted(set(before) & set(after))
    if not shared:
        raise ValueError("the two sides share no (fold, seed) cell")
    models = [m for m in after[shared[0]] if all(m in before[c] and m in after[c] for c in shared)]
    results = []
    for model in models:
        for metric in metrics:
            diffs = [
                float(after[c][model][metric]) - float(before[c][model][metric])
                for c in shared
                if _finite(after[c][model].get(metric)) and _finite(before[c][model].get(metric))
            ]
            if diffs:
                results.append(_paired(model, metric, diffs))
    return results


def compare_by_fold(
    before: Mapping[Cell, Mapping[str, Mapping[str, float]]],
    after: Mapping[Cell, Mapping[str, Mapping[str, float]]],
    *,
    metrics: Sequence[str] = METRICS,
) -> list[tuple[str, Paired]]:
    """`compare` on each fold's shared cells and, with more than one fold, on all of them
    (fold "all"); nothing when the two sides share no cell."""
    shared = sorted(set(before) & set(after))
    folds = list(dict.fromkeys(fold for fold, _ in shared))
    out = []
    for fold in [*folds, "all"] if len(folds) > 1 else folds:
        mine = [c for c in shared if fold in ("all", c[0])]
        pairs = compare({c: before[c] for c in mine}, {c: after[c] for c in mine}, metrics=metrics)
        out += [(fold, paired) for paired in pairs]
    return out


def fold_row(fold: str, paired: Paired, *, lower_is_better: bool) -> dict[str, Any]:
    """A `compare_by_fold` result as a report row: `better_in` counts the cells where the
    `after` side was better (lower or higher, as the metric wants)."""
    return {
        "fold": fold,
        "metric": paired.metric,
        "cells": paired.n,
        "mean": paired.mean,
        "low": paired.low,
        "high": paired.high,
        "better_in": paired.lower_in if lower_is_better else paired.higher_in,
    }


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _paired(model: str, metric: str, diffs: Sequence[float]) -> Paired:
    s = spread(diffs)  # mean and sample standard deviation (0 for one cell)
    n, mean, std = len(diffs), s["mean"], s["std"]
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.inf
    return Paired(
        model=model,
        metric=metric,
        n=n,
        mean=mean,
        std=std,
        low=mean - half,
        high=mean + half,
        lower_in=sum(d < 0 for d in diffs),
        higher_in=sum(d > 0 for d in diffs),
    )


def render(results: Sequence[Paired], *, command: str) -> str:
    lines = [
        "# Paired comparison (after - before)",
        "",
        f"Generated by `{command}`. One cell = one fold and seed; for RMSE lower is better, "
        "for the ranking metrics higher.",
        "",
        "| model | metric | cells | mean diff | std | 95% CI of the mean | after lower in |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {r.model} | {r.metric} | {r.n} | {r.mean:+.4f} | {r.std:.4f} | "
        f"[{r.low:+.4f}, {r.high:+.4f}] | {r.lower_in} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, nargs="+", required=True)
    parser.add_argument("--after", type=Path, nargs="+", required=True)
    parser.add_argument(
        "--row", metavar="BEFORE=AFTER", help="compare these two rows (models) of the runs"
    )
    parser.add_argument("--out-md", type=Path, default=None, help="default: stdout")
    args = parser.parse_args(argv)
    if args.row is not None and args.row.count("=") != 1:
        parser.error(f"--row takes BEFORE=AFTER, got {args.row!r}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        before = cells(json.loads(p.read_text(encoding="utf-8")) for p in args.before)
        after = cells(json.loads(p.read_text(encoding="utf-8")) for p in args.after)
        if args.row is not None:
            old, new = args.row.split("=")
            label = f"{new} against {old}"
            before = only_row(before, old, as_name=label)
            after = only_row(after, new, as_name=label)
        results = compare(before, after)
    except KeyError as exc:
        raise SystemExit(
            f"bench.paired: not a bench.quality or bench.student result (no {exc})"
        ) from None
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise SystemExit(f"bench.paired: {exc}") from None
    command = "python -m bench.paired " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = render(results, command=command)
    if args.out_md is None:
        sys.stdout.write(text)
    else:
        args.out_md.write_text(text, encoding="utf-8")
        log.info("wrote %s", args.out_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
