"""How many validation users the teacher's blend weights need on a large catalogue.

`train.fit_ensemble_weights` picks the blend's score weights by validation NDCG@10 over
a sample of users; it ranked at most 2^24 / items of them (167 at 10^5 items, 64 at 10^6)
until the score matrices came in blocks (training/blend_scores.py), and now ranks up to
3,000. This bench trains one quick teacher on a synthetic large-catalogue set (ml-latest
format, `training.synth`; cached in --work), then fits the weights again with each
budget of users and several user samples, on the default configuration's grid (step
0.05, 231 points), and scores each fitted teacher on the test split (protocol P, the
same seeded sample of test users every time):

    python -m bench.blend_users --work /tmp/blend-users --out bench/results/blend-users

Each fit standardises the teacher on its first block of users, as training does, so a
row measures the whole of what the sample decides. The spread over samples is what a
user of the pipeline would see from one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench._teacher_cache import load_teacher, save_teacher, teacher_config
from training import checkpoint
from training.data import Dataset, Ratings, holdout, load_dataset, make_split
from training.evaluate import evaluate_model
from training.models.ensemble import EnsembleTeacher
from training.synth import SynthConfig, generate
from training.train import TeacherConfig, fit_ensemble_weights, train_teacher

log = logging.getLogger("bench.blend_users")
METRICS = ("ndcg@10", "recall@10")


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.blend_users", description=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="data and teacher cache")
    parser.add_argument("--out", type=Path, required=True, help="directory for the md/json")
    parser.add_argument(
        "--shape",
        type=parse_ints,
        default=[20_000, 100_000, 1_000_000],
        help="users,items,ratings of the synthetic set",
    )
    parser.add_argument("--budgets", type=parse_ints, default=[64, 167, 500, 3000])
    parser.add_argument("--samples", type=int, default=5, help="user samples per budget")
    parser.add_argument("--test-users", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if len(args.shape) != 3:
        parser.error("--shape: users,items,ratings")
    if args.samples < 1 or args.test_users < 1:
        parser.error("--samples and --test-users: at least 1")
    return args


def data(work: Path, shape: Sequence[int]) -> Dataset:
    users, items, ratings = shape
    folder = work / f"data-{users}-{items}-{ratings}"
    if not (folder / "ratings.csv").exists():
        generate(SynthConfig(n_users=users, n_items=items, n_ratings=ratings), folder)
    return load_dataset(folder, dataset="ml-latest")


def teacher_for(ds: Dataset, train: Ratings, config: TeacherConfig, work: Path) -> EnsembleTeacher:
    """The quick teacher of `train`, trained once per teacher code version."""
    fm = ds.feature_map
    code = checkpoint.code_version("teacher")[:12]
    path = work / f"teacher-{fm.n_users}-{fm.n_items}-{len(train)}-{code}.pt"
    if path.exists():
        return load_teacher(path, fm=fm)
    teacher, _ = train_teacher(ds, train, config=config)
    save_teacher(teacher, path, config=config, fm=fm)
    return teacher


def fit_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    torch.set_num_threads(args.threads)
    ds = data(args.work, args.shape)
    fm = ds.feature_map
    split = make_split(ds, split="random")
    config = replace(teacher_config(seed=0, threads=args.threads, quick=True), refit_full=False)
    teacher = teacher_for(ds, split.train, config, args.work)
    fit, valid = holdout(split.train, fraction=config.valid_fraction, seed=config.seed)
    search = TeacherConfig()  # the default configuration's grid, not --quick's coarse one
    rows = []
    for budget in args.budgets:
        for sample in range(args.samples):
            started = time.perf_counter()
            report = fit_ensemble_weights(
                teacher,
                ds.tables,
                fit=fit,
                valid=valid,
                fm=fm,
                step=search.weight_step,
                max_users=budget,
                seed=sample,
                workers=args.threads,
                rating_score=search.rating_score_weight,
            )
            seconds = time.perf_counter() - started
            with torch.no_grad():
                test = evaluate_model(
                    teacher,
                    ds.tables,
                    train=split.train,
                    test=split.test,
                    n_users=fm.n_users,
                    n_items=fm.n_items,
                    max_users=args.test_users,
                )
            rows.append(
                {
                    "budget": budget,
                    "sample": sample,
                    "users": report["valid_users"],
                    "weights": [round(w, 2) for w in report["fitted"]["score_weights"]],
                    "fit_seconds": round(seconds, 2),
                    "test_users": int(test["n_users"]),
                    **{m: round(float(test[m]), 5) for m in METRICS},
                }
            )
            log.info("%s", json.dumps(rows[-1]))
    shape = {"users": fm.n_users, "items": fm.n_items, "ratings": len(ds.ratings)}
    return rows, shape


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget: mean, spread (sample standard deviation) and range of each metric."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        mine = [r for r in rows if r["budget"] == budget]
        entry: dict[str, Any] = {
            "budget": budget,
            "users": mine[0]["users"],
            "samples": len(mine),
            "distinct_weights": len({tuple(r["weights"]) for r in mine}),
            "fit_seconds": statistics.median(r["fit_seconds"] for r in mine),
        }
        for m in METRICS:
            values = [r[m] for r in mine]
            entry[m] = statistics.fmean(values)
            entry[f"{m}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry[f"{m}_min"], entry[f"{m}_max"] = min(values), max(values)
        out.append(entry)
    return out


def render(
    totals: list[dict[str, Any]], rows: list[dict[str, Any]], *, command: str, shape: dict[str, Any]
) -> str:
    lines = [
        "# Blend weights: validation users on a large catalogue",
        "",
        f"Generated by `bench/blend_users.py`. Command: `{command}`.",
        f"Synthetic set: {shape['users']:,} users, {shape['items']:,} items, "
        f"{shape['ratings']:,} ratings, random split; one quick teacher (no refit), its "
        "weights searched on the default grid (231 points). Each row: the weights fitted "
        f"on that many validation users, {totals[0]['samples']} user "
        f"samples, and the teacher's protocol-P metrics on {rows[0]['test_users']:,} test "
        "users (the same users every time). sd: sample standard deviation over samples.",
        "",
        "| users ranked | samples | distinct weights | test ndcg@10 (sd) | range "
        "| test recall@10 (sd) | range | fit s (median) |",
        "|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for t in totals:
        cells = " | ".join(
            f"{t[m]:.4f} ({t[f'{m}_sd']:.4f}) | {t[f'{m}_min']:.4f}-{t[f'{m}_max']:.4f}"
            for m in METRICS
        )
        lines.append(
            f"| {t['users']:,} | {t['samples']} | {t['distinct_weights']} | {cells} "
            f"| {t['fit_seconds']:.1f} |"
        )
    lines += [
        "",
        "| users ranked | sample | weights (mf, xdeepfm, autoint) | test ndcg@10 |",
        "|---:|---:|---|---:|",
    ]
    lines += [
        f"| {r['users']:,} | {r['sample']} | {r['weights']} | {r['ndcg@10']:.4f} |" for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows, shape = fit_rows(args)
    totals = summary(rows)
    command = "python -m bench.blend_users " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"items-{shape['items']}"
    payload = {"command": command, "shape": shape, "summary": totals, "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(
        render(totals, rows, command=command, shape=shape), encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
