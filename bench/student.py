"""Student benchmark: Fisher analysis, pruning curve, ablations and the report in docs/.

    python -m bench.student --data-dir /path/to/ml-100k --folds u1 [--seeds 3] [--quick]

For each fold and each of --seeds seeds: trains (or loads from --teacher-cache) the
teacher, measures it, runs the Fisher analysis (first fold), distils students at every
--ratios value with Fisher pruning, then the ablations at --ratio (--ablations all): a
same-size student trained without KD, magnitude and random pruning, other loss weights and
scopes, and KD into the final shape without pruning; --ablations pruning keeps only the
magnitude and random pruning runs. Teacher and students are exported to
ONNX and timed side by side in this one run. The targets section checks the student
against the teacher on every fold separately (mean over seeds, with the spread), and
gives each headline ratio as the mean over seeds with its standard deviation; with
pruning ablations, the default pruning order is compared with the others fold by fold and
seed by seed. Writes docs/student.md (generated section), docs/student/*.png and
docs/student_results.json under --out.

Tuning never reads the test folds: --holdout scores on a held-back tenth of each fold's
training ratings instead, and --set FIELD=VALUE changes a StudentConfig field (shape.FIELD
one of the shape's widths, e.g. --set initial=shape --set shape.user_hidden=64).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._heldout import hold_back
from bench._spread import fmt_spread, seed_list, spread
from bench._teacher_cache import load_teacher, save_teacher, teacher_cache_path, teacher_config
from bench.paired import Cell, compare_by_fold, fold_row
from training.checkpoint import CheckpointError
from training.data import Ratings, Split, load_dataset, make_split
from training.distill import distill_student
from training.distill_config import StudentConfig
from training.evaluate import evaluate_model, evaluate_popularity
from training.export import export_onnx, ort_latency_ms
from training.fisher_analysis import fisher_report
from training.kd_targets import teacher_pools
from training.models.base import TwoHeadModel, count_params
from training.models.student import Student, StudentShape
from training.report import write_student_report
from training.train import train_teacher

log = logging.getLogger("bench.student")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, help="ml-100k folder (u.data ...)")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only re-render the report from OUT/student_results.json",
    )
    parser.add_argument("--folds", default="u1", help="comma-separated canonical folds")
    parser.add_argument(
        "--ratios",
        default="0,0.25,0.5,0.75,0.9",
        help="pruning curve: shares of the teacher's parameters removed",
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=StudentConfig.prune_ratio,
        help="the chosen ratio (default: the StudentConfig default)",
    )
    parser.add_argument(
        "--method",
        default="fisher",
        choices=["fisher", "magnitude", "random"],
        help="default pruning method of the curve",
    )
    parser.add_argument(
        "--ablations",
        choices=["all", "pruning", "none"],
        default="all",
        help="variants at --ratio: all of them; pruning = magnitude and random pruning "
        "only (the Fisher question, cheap enough for every fold and seed); none",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget: for tests only")
    parser.add_argument(
        "--teacher-cache",
        type=Path,
        default=None,
        help="folder to save/load trained teachers (checkpoints keyed by the model code)",
    )
    parser.add_argument(
        "--wait-for-teachers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for a teacher missing from --teacher-cache to appear "
        "(a bench.quality --save-teachers run still writing them) before training it",
    )
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds per fold (--seed, --seed+1, ...): teacher and students trained per seed",
    )
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="tuning mode: score on a held-back tenth of each fold's training ratings "
        "(seed 1, as bench/refit.py), never on the test fold; teachers train on the rest",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a StudentConfig field for every student of the run (repeatable), e.g. "
        "--set finetune_epochs=6; with --holdout, to tune on validation data",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes in parallel (forked): over the (seed, fold) pairs when there are "
        "several, else over the fold's distillation runs; sizes and latencies are "
        "measured afterwards, one model at a time",
    )
    args = parser.parse_args(argv)
    try:
        args.config_overrides = config_overrides(args.overrides)
    except ValueError as err:
        parser.error(f"--set: {err}")
    return args


def config_overrides(pairs: list[str]) -> dict[str, Any]:
    """`FIELD=VALUE` strings as StudentConfig fields, each value parsed as its field's type."""
    defaults = {f.name: getattr(StudentConfig(), f.name) for f in fields(StudentConfig)}
    # The shape's widths as `shape.FIELD` (with `initial=shape`, the widths run as given).
    defaults |= {f"shape.{k}": v for k, v in StudentShape().as_dict().items()}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ValueError(
                f"{pair!r} is not FIELD=VALUE with a StudentConfig field (or shape.FIELD)"
            )
        default = defaults[name]
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"{name} takes true or false, got {text!r}")
            out[name] = text.lower() == "true"
        elif isinstance(default, int | float | str):
            try:
                out[name] = type(default)(text)
            except ValueError:
                kind = type(default).__name__
                raise ValueError(f"{name}: {text!r} is not a valid {kind}") from None
        else:
            raise ValueError(f"{name} is set by its widths, as shape.FIELD=VALUE")
    widths = {k.removeprefix("shape."): out.pop(k) for k in list(out) if k.startswith("shape.")}
    if widths:
        if min(widths.values()) < 1:
            raise ValueError("shape widths must be positive")
        out["shape"] = replace(StudentShape(), **widths)
    return out


def get_teacher(
    args: argparse.Namespace, dataset: Any, train: Ratings, fold: str
) -> tuple[TwoHeadModel, float]:
    cached = (
        teacher_cache_path(args.teacher_cache, fold, quick=args.quick, seed=args.seed)
        if args.teacher_cache
        else None
    )
    if cached is not None:
        _await(cached, args.wait_for_teachers)
    if cached is not None and cached.is_file():
        log.info("loading the teacher from %s", cached)
        try:
            return load_teacher(cached, fm=dataset.feature_map), 0.0
        except CheckpointError as err:
            log.warning("not using the cached teacher (%s); training it again", err)
    config = teacher_config(seed=args.seed, threads=args.threads, quick=args.quick)
    started = time.perf_counter()
    teacher, _ = train_teacher(dataset, train, config=config)
    seconds = time.perf_counter() - started
    if cached is not None:
        save_teacher(teacher, cached, config=config, fm=dataset.feature_map)
    return teacher.eval(), seconds


def _await(path: Path, seconds: float, *, poll: float = 5.0) -> bool:
    """Whether `path` is a file, waiting up to `seconds` for it (checkpoints are written
    whole and renamed into place, so one that appears is complete)."""
    deadline = time.monotonic() + seconds
    if not path.is_file() and seconds > 0:
        log.info("waiting up to %.0f s for %s", seconds, path)
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
    return path.is_file()


_SHARED: dict[str, Any] = {}  # dataset, split, teacher: inherited by forked workers


def _distil_job(
    job: tuple[str, StudentConfig],
) -> tuple[str, TwoHeadModel, dict[str, Any], dict[str, float]]:
    name, config = job
    torch.set_num_threads(max(config.threads, 1))
    dataset, split, teacher = _SHARED["dataset"], _SHARED["split"], _SHARED["teacher"]
    fm = dataset.feature_map
    student, info = distill_student(
        dataset, split.train, teacher, config=config, pools=_SHARED["pools"]
    )
    metrics = evaluate_model(
        student,
        dataset.tables,
        train=split.train,
        test=split.test,
        n_users=fm.n_users,
        n_items=fm.n_items,
    )
    return name, student, info, {k: v for k, v in metrics.items() if k != "n_users"}


# Each distillation run by name: the student, its info and its test metrics.
Trained = dict[str, tuple[TwoHeadModel, dict[str, Any], dict[str, float]]]


def run_jobs(jobs: list[tuple[str, StudentConfig]], n_jobs: int) -> Trained:
    """Distils every job, `n_jobs` at a time in forked processes (1 = in this process)."""
    if n_jobs <= 1 or len(jobs) <= 1:
        done = [_distil_job(job) for job in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(min(n_jobs, len(jobs))) as pool:
            done = pool.map(_distil_job, jobs, chunksize=1)
    return {name: (model, info, metrics) for name, model, info, metrics in done}


def onnx_row(
    model: TwoHeadModel, dataset: Any, *, runs: int, tmp: Path, name: str
) -> dict[str, Any]:
    """Size and catalogue latency; called for every model after training, one at a time."""
    fm = dataset.feature_map
    path = export_onnx(model, fm, tmp / f"{name}.onnx", metadata={"model": name})
    return {
        "params": count_params(model),
        "onnx_bytes": path.stat().st_size,
        "latency_ms_1": ort_latency_ms(path, fm, dataset.tables, threads=1, runs=runs),
        "latency_ms_default": ort_latency_ms(path, fm, dataset.tables, threads=0, runs=runs),
    }


def fold_split(dataset: Any, fold: str, *, held_back: bool) -> Split:
    """The canonical fold, or (`held_back`) its training ratings split into a training
    part and a held-back tenth that stands in for the test fold (tuning on validation)."""
    split = make_split(dataset, split=fold)
    if not held_back:
        return split
    train, check = hold_back(split.train)
    return Split(name=f"{fold}-holdout", train=train, test=check)


_NAMES = {
    "scratch": "same size, no KD (ground truth only, scratch)",
    "magnitude": "PAKD, magnitude pruning",
    "random": "PAKD, random pruning",
    "small": "KD into the small shape, no pruning",
    "gt_high": "PAKD, ground-truth weight 0.2",
    "gt_none": "PAKD, KD only (ground-truth weight 0)",
    "list_kd": "PAKD, ranking KD over the sampled list only",
}


@dataclass
class FoldRun:
    """What one (seed, fold) trained and scored; sizes and latencies are measured later,
    in the main process and one model at a time, so that parallel folds do not skew them."""

    fold: str
    seed: int
    teacher: TwoHeadModel
    teacher_seconds: float
    teacher_metrics: dict[str, float]
    popularity: dict[str, float]
    fisher: dict[str, Any] | None
    fisher_seconds: float
    ratios: list[float]
    done: Trained


def train_fold(
    args: argparse.Namespace, dataset: Any, fold: str, *, fisher: bool, n_jobs: int
) -> FoldRun:
    """Teacher, Fisher analysis (when `fisher`) and every student of one (seed, fold)."""
    split = fold_split(dataset, fold, held_back=args.holdout)
    fm = dataset.feature_map
    teacher, teacher_seconds = get_teacher(args, dataset, split.train, split.name)
    _SHARED.update(dataset=dataset, split=split, teacher=teacher)
    t_metrics = evaluate_model(
        teacher,
        dataset.tables,
        train=split.train,
        test=split.test,
        n_users=fm.n_users,
        n_items=fm.n_items,
    )
    pop = evaluate_popularity(split.train, split.test, n_users=fm.n_users, n_items=fm.n_items)
    base = StudentConfig(
        quick=args.quick, seed=args.seed, threads=args.threads, method=args.method, progress=False
    )
    base = replace(base, **args.config_overrides)
    stage_started = time.perf_counter()
    report = None
    if fisher:
        eff = base.effective()
        report = fisher_report(
            teacher,
            dataset,
            split.train,
            examples=eff.fisher_examples,
            positives=eff.list_positives,
            negatives=eff.list_negatives,
            temperature=eff.temperature,
            chunk=eff.fisher_chunk,
            seed=eff.seed,
        )
    # The teacher's outputs on the training lists, computed once and shared by every run.
    _SHARED["pools"] = teacher_pools(dataset, split.train, teacher, config=base)
    fisher_seconds = time.perf_counter() - stage_started
    ratios = sorted({*(float(r) for r in args.ratios.split(",")), args.ratio})
    jobs = [(f"ratio {r}", replace(base, prune_ratio=r)) for r in ratios]
    jobs += _ablation_jobs(args, base, _NAMES)
    done = run_jobs(jobs, n_jobs)
    if args.ablations == "all":
        chosen_model = done[f"ratio {args.ratio}"][0]
        assert isinstance(chosen_model, Student)
        small = replace(
            base, prune_ratio=args.ratio, initial="shape", shape=chosen_model.shape, prune=False
        )
        scratch = replace(
            small, w_rating_kd=0.0, w_ranking_kd=0.0, w_feature_kd=0.0, w_ground_truth=1.0
        )
        done.update(run_jobs([(_NAMES["scratch"], scratch), (_NAMES["small"], small)], n_jobs))
    return FoldRun(
        fold=split.name,  # the rows say which data scored them
        seed=args.seed,
        teacher=teacher,
        teacher_seconds=teacher_seconds,
        teacher_metrics={k: v for k, v in t_metrics.items() if k != "n_users"},
        popularity={k: v for k, v in pop.items() if k != "n_users"},
        fisher=report,
        fisher_seconds=fisher_seconds,
        ratios=ratios,
        done=done,
    )


def _fold_task(task: tuple[int, str, bool]) -> FoldRun:
    seed, fold, fisher = task
    args, dataset = _SHARED["args"], _SHARED["dataset"]
    torch.set_num_threads(max(args.threads, 1))
    seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
    return train_fold(seed_args, dataset, fold, fisher=fisher, n_jobs=_SHARED["n_jobs"])


def train_folds(
    args: argparse.Namespace, dataset: Any, tasks: list[tuple[int, str]]
) -> list[FoldRun]:
    """Every (seed, fold) of `tasks`, in order; the Fisher analysis on the first.

    With several tasks, `args.jobs` of them run at a time in forked processes (each
    distils its students one after another); with one, `args.jobs` parallelises that
    fold's distillation runs instead.
    """
    marked = [(seed, fold, i == 0) for i, (seed, fold) in enumerate(tasks)]
    parallel = args.jobs > 1 and len(tasks) > 1
    _SHARED.update(args=args, dataset=dataset, n_jobs=1 if parallel else args.jobs)
    if not parallel:
        return [_fold_task(task) for task in marked]
    with multiprocessing.get_context("fork").Pool(min(args.jobs, len(tasks))) as pool:
        return pool.map(_fold_task, marked, chunksize=1)


def record_fold(
    args: argparse.Namespace, dataset: Any, run: FoldRun, results: dict[str, Any], tmp: Path
) -> None:
    """The rows of one (seed, fold): sizes and latencies measured here, one model at a time."""
    fold, seed, done = run.fold, run.seed, run.done
    if run.fisher is not None:
        results.setdefault("fisher", run.fisher)
    t_row = {
        "model": "teacher",
        "fold": fold,
        "seed": seed,
        "train_seconds": run.teacher_seconds,
        **run.teacher_metrics,
        **onnx_row(run.teacher, dataset, runs=args.latency_runs, tmp=tmp, name="teacher"),
    }
    results["side_by_side"].append(
        {"model": "popularity", "fold": fold, "seed": seed, **run.popularity}
    )
    results["side_by_side"].append(t_row)
    for ratio in run.ratios:
        model, info, metrics = done[f"ratio {ratio}"]
        row = {
            "ratio": ratio,
            "fold": fold,
            "seed": seed,
            "seconds": info["seconds"],
            "param_share": info["params"] / info["teacher_params"],
            **metrics,
            **onnx_row(model, dataset, runs=args.latency_runs, tmp=tmp, name=f"student-{ratio}"),
        }
        results["curve"].append(row)
        log.info("%s ratio %.2f: %s", fold, ratio, row)
        if abs(ratio - args.ratio) < 1e-9:
            results["side_by_side"].append({"model": "student", **row})
            summary = summary_row(t_row, row, run.fisher_seconds)
            results["summary_rows"].append({**summary, "_fold": fold, "_seed": seed})
            results.setdefault("student", {"info": info})
    if args.ablations != "none":
        _record_ablations(args, run, results)


def _record_ablations(args: argparse.Namespace, run: FoldRun, results: dict[str, Any]) -> None:
    done = run.done
    _, chosen_info, chosen_metrics = done[f"ratio {args.ratio}"]
    rows = [(f"PAKD, {args.method} pruning (default)", chosen_info, chosen_metrics)]
    rows += [(name, done[name][1], done[name][2]) for name in _NAMES.values() if name in done]
    for name, info, metrics in rows:
        results["ablations"].append(
            {
                "name": name,
                "fold": run.fold,
                "seed": run.seed,
                "params": info["params"],
                "seconds": info["seconds"],
                **metrics,
            }
        )
    if _NAMES["scratch"] not in done:
        return
    scratch_row = done[_NAMES["scratch"]][2]
    summary = results["summary_rows"][-1]
    summary["rmse_vs_scratch"] = summary["_rmse"] / scratch_row["rmse"]
    summary["ndcg_vs_scratch"] = summary["_ndcg"] / scratch_row["ndcg@10"]


def _ablation_jobs(
    args: argparse.Namespace, base: StudentConfig, names: dict[str, str]
) -> list[tuple[str, StudentConfig]]:
    """The variants distilled beside the chosen student, all at --ratio."""
    if args.ablations == "none":
        return []
    jobs = [
        (names[m], replace(base, prune_ratio=args.ratio, method=m))
        for m in ("magnitude", "random")
        if m != args.method
    ]
    if args.ablations == "all":
        # The default's small ground-truth weight, against a larger one and none at all.
        jobs += [
            (names["gt_high"], replace(base, prune_ratio=args.ratio, w_ground_truth=0.2)),
            (names["gt_none"], replace(base, prune_ratio=args.ratio, w_ground_truth=0.0)),
            (names["list_kd"], replace(base, prune_ratio=args.ratio, ranking_kd_scope="list")),
        ]
    return jobs


def summary_row(
    teacher: dict[str, Any], student: dict[str, Any], fisher_seconds: float
) -> dict[str, Any]:
    return {
        "param_share": student["params"] / teacher["params"],
        "bytes_share": student["onnx_bytes"] / teacher["onnx_bytes"],
        "speedup_1": teacher["latency_ms_1"] / student["latency_ms_1"],
        "speedup_default": teacher["latency_ms_default"] / student["latency_ms_default"],
        "rmse_ratio": student["rmse"] / teacher["rmse"],
        "ndcg_ratio": student["ndcg@10"] / teacher["ndcg@10"],
        # Fisher analysis + teacher outputs + one distillation run.
        "stage_minutes": (fisher_seconds + student["seconds"]) / 60.0,
        "_rmse": student["rmse"],
        "_ndcg": student["ndcg@10"],
    }


# The student issue's bar, checked on every fold separately (the mean over its seeds),
# not only on the mean over folds.
FOLD_TARGETS = (
    ("ndcg_ratio", ">=", 0.97),
    ("rmse_ratio", "<=", 1.01),
    ("param_share", "<=", 0.10),
    ("bytes_share", "<=", 0.10),
)


def fold_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fold: each FOLD_TARGETS ratio as its spread over seeds, and whether it is met.

    `rows` are the summary rows (one per fold and seed, with `_fold` and `_seed`). A
    fold meets a target when the mean over its seeds does; `met` needs all of them.
    """
    out = []
    for fold in dict.fromkeys(r["_fold"] for r in rows):
        mine = [r for r in rows if r["_fold"] == fold]
        entry: dict[str, Any] = {"fold": fold, "seeds": len(mine)}
        met = True
        for key, op, bound in FOLD_TARGETS:
            s = spread([float(r[key]) for r in mine])
            ok = s["mean"] >= bound if op == ">=" else s["mean"] <= bound
            entry[key] = {**s, "bound": f"{op} {bound}", "met": bool(ok)}
            met = met and bool(ok)
        entry["met"] = met
        out.append(entry)
    return out


def summary_spread(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each headline figure's spread over seeds of its mean over the folds."""
    keys = sorted({k for r in rows for k in r if not k.startswith("_")})
    seeds = sorted({r["_seed"] for r in rows})
    out = {}
    for key in keys:
        per_seed = []
        for seed in seeds:
            values = [float(r[key]) for r in rows if r["_seed"] == seed and key in r]
            if values:
                per_seed.append(sum(values) / len(values))
        out[key] = spread(per_seed)
    return out


PRUNING_METRICS = ("ndcg@10", "recall@10", "rmse")


def pruning_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default student minus each other pruning method's, paired by fold and seed.

    Students of one (fold, seed) share the teacher, the data and the distillation seed:
    only the pruning order differs, so the paired difference removes the fold's difficulty
    and the teacher's noise. Per fold and over all folds: the mean difference, its 95%
    confidence interval (bench/paired.py) and in how many cells the default was better.
    """
    cells: dict[str, dict[Cell, dict[str, dict[str, Any]]]] = {}
    for row in rows:
        cell = (str(row["fold"]), int(row["seed"]))
        cells.setdefault(row["name"], {})[cell] = {"student": row}
    default = next((n for n in cells if n.endswith("(default)")), None)
    if default is None:
        return []
    return [
        {"against": name, **fold_row(fold, paired, lower_is_better=paired.metric == "rmse")}
        for name, other in cells.items()
        if name != default and name.endswith(" pruning")
        for fold, paired in compare_by_fold(other, cells[default], metrics=PRUNING_METRICS)
    ]


def ablation_note(rows: list[dict[str, Any]], method: str) -> str:
    """One line per PAKD variant: does the default beat it (means over the folds run)?"""
    by: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        by[name] = {k: float(np.mean([r[k] for r in mine])) for k in ("rmse", "ndcg@10")}
    default = next((r for n, r in by.items() if n.endswith("(default)")), None)
    others = {n: r for n, r in by.items() if n.startswith("PAKD,") and r is not default}
    if default is None or not others:
        return ""
    lines = []
    for name, row in others.items():
        better_rmse = default["rmse"] < row["rmse"]
        better_ndcg = default["ndcg@10"] > row["ndcg@10"]
        verdict = (
            f"beats {name} on both"
            if better_rmse and better_ndcg
            else f"loses to {name} on both"
            if not (better_rmse or better_ndcg)
            else f"beats {name} on {'RMSE' if better_rmse else 'NDCG@10'} only"
        )
        lines.append(
            f"- The default ({method} pruning) {verdict} "
            f"(RMSE {default['rmse']:.4f} vs {row['rmse']:.4f}, NDCG@10 "
            f"{default['ndcg@10']:.4f} vs {row['ndcg@10']:.4f})."
        )
    return (
        "As measured (mean over the folds and seeds run; differences of a few 0.001 are "
        "within noise):\n\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.render_only:
        saved = json.loads((args.out / "student_results.json").read_text(encoding="utf-8"))
        saved["pruning"] = pruning_comparison(saved.get("ablations", []))
        log.info("wrote %s", write_student_report(saved, args.out))
        return 0
    if args.data_dir is None:
        raise SystemExit("--data-dir is required (the ml-100k folder)")
    logging.getLogger("training.train").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dataset = load_dataset(args.data_dir, dataset="ml-100k")
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    results: dict[str, Any] = {"side_by_side": [], "curve": [], "ablations": [], "summary_rows": []}
    seeds = seed_list(args.seed, args.seeds)
    runs = train_folds(args, dataset, [(seed, fold) for seed in seeds for fold in folds])
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            record_fold(args, dataset, run, results, Path(tmp))
    rows = results.pop("summary_rows")
    if rows:
        keys = sorted({k for r in rows for k in r if not k.startswith("_")})
        results["summary"] = {
            k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys
        }
        results["summary_spread"] = summary_spread(rows)
        results["fold_targets"] = fold_targets(rows)
        for entry in results["fold_targets"]:
            log.info(
                "fold %s: %s",
                entry["fold"],
                {k: fmt_spread(entry[k]) for k, _, _ in FOLD_TARGETS},
            )
    results["ablation_note"] = ablation_note(results["ablations"], args.method)
    results["pruning"] = pruning_comparison(results["ablations"])
    results["meta"] = {
        "command": "python -m bench.student " + shlex.join(sys.argv[1:] if argv is None else argv),
        "dataset": "ml-100k",
        "folds": folds,
        "seeds": seeds,
        "quick": args.quick,
        "seconds": time.perf_counter() - started,
        "cpu": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
    }
    out = write_student_report(results, args.out)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
