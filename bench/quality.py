"""Quality benchmark: the ensemble teacher against its peers under protocol P.

    python -m bench.quality --data-dir /path/to/ml-100k [--folds u1,u2,u3,u4,u5] [--jobs 2]

On each canonical ml-100k fold it trains the teacher (its three components and the
ensemble), and measures in the same run the popularity baseline, scikit-surprise SVD and
SVD++ (library defaults) and implicit ALS (64 factors, regularisation 0.05, 20
iterations). Writes docs/QUALITY.md and bench/results/quality.json. --quick is a smoke
run (small models, few epochs) whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["rmse", "mae", "recall@10", "ndcg@10", "hr@10", "coverage@10"]
PEERS = ("popularity", "surprise-svd", "surprise-svdpp", "implicit-als")
TEACHER_ROWS = (
    "teacher (fitted weights)",
    "teacher (default 0.4/0.4/0.2)",
    "component: mf",
    "component: xdeepfm",
    "component: autoint",
)

# Options whose values are paths of this machine: left out of the recorded command.
_PATH_OPTIONS = ("--data-dir", "--out-md", "--out-json", "--save-teachers")

log = logging.getLogger("bench.quality")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("MOVIELENS_DIR"),
        help="ml-100k folder (u.data, u.item, u.user, u1..u5); default $MOVIELENS_DIR",
    )
    parser.add_argument(
        "--folds",
        default="u1,u2,u3,u4,u5",
        help="comma-separated canonical folds (default: u1..u5)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="folds trained in parallel processes (each with --threads)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per fold (default: 2 // jobs, at least 1)",
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="only re-render the Markdown from a previous run's JSON",
    )
    parser.add_argument(
        "--save-teachers",
        type=Path,
        default=None,
        help="folder to save each fold's trained teacher in (bench.student --teacher-cache)",
    )
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "QUALITY.md")
    parser.add_argument(
        "--out-json", type=Path, default=ROOT / "bench" / "results" / "quality.json"
    )
    args = parser.parse_args(argv)
    if args.data_dir is None and args.from_json is None:
        parser.error("--data-dir is required (or set MOVIELENS_DIR)")
    if not args.threads:
        args.threads = max(1, 2 // max(1, args.jobs))
    return args


def run_fold(fold: str, args: argparse.Namespace) -> dict[str, Any]:
    """Trains and measures every model on one fold; returns metrics per model."""
    # Imported here: main() first makes the checkout importable when run as a file.
    import torch  # noqa: PLC0415

    from bench._teacher_cache import (  # noqa: PLC0415
        save_teacher,
        teacher_cache_path,
        teacher_config,
    )
    from training import baselines  # noqa: PLC0415
    from training.data import load_dataset, make_split  # noqa: PLC0415
    from training.evaluate import evaluate_model  # noqa: PLC0415
    from training.models.ensemble import DEFAULT_WEIGHTS  # noqa: PLC0415
    from training.train import train_teacher  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {fold} %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data_dir)
    split = make_split(ds, split=fold, data_dir=args.data_dir)
    fm = ds.feature_map
    kw: dict[str, Any] = {"n_users": fm.n_users, "n_items": fm.n_items}
    rows: dict[str, dict[str, float]] = {}
    peers = [p for p in args.peers.split(",") if p]
    if "popularity" in peers:
        rows["popularity"] = baselines.popularity(split.train, split.test, **kw)
    if "surprise-svd" in peers:
        rows["surprise-svd"] = baselines.surprise_model(
            "svd", split.train, split.test, seed=args.seed, **kw
        )
    if "surprise-svdpp" in peers:
        rows["surprise-svdpp"] = baselines.surprise_model(
            "svdpp", split.train, split.test, seed=args.seed, **kw
        )
    if "implicit-als" in peers:
        rows["implicit-als"] = baselines.implicit_als(
            split.train, split.test, seed=args.seed, threads=args.threads, **kw
        )
    config = teacher_config(seed=args.seed, threads=args.threads, quick=args.quick)
    started, cpu_started = time.perf_counter(), time.process_time()
    teacher, report = train_teacher(ds, split.train, config=config)
    train_seconds = time.perf_counter() - started
    # CPU time of this process: comparable across runs whatever else shares the machine.
    train_cpu_seconds = time.process_time() - cpu_started
    if args.save_teachers is not None:
        save_teacher(
            teacher,
            teacher_cache_path(args.save_teachers, fold, quick=args.quick, seed=args.seed),
            config=config,
            fm=fm,
        )

    def measure(model: Any) -> dict[str, float]:
        return evaluate_model(model, ds.tables, train=split.train, test=split.test, **kw)

    rows["teacher (fitted weights)"] = measure(teacher)
    rows["teacher (fitted weights)"]["train_seconds"] = train_seconds
    rows["teacher (fitted weights)"]["train_cpu_seconds"] = train_cpu_seconds
    default = copy.deepcopy(teacher)
    default.set_weights(rating=DEFAULT_WEIGHTS, rating_bias=0.0, score=DEFAULT_WEIGHTS)
    rows["teacher (default 0.4/0.4/0.2)"] = measure(default)
    for name, part in zip(("mf", "xdeepfm", "autoint"), teacher.components, strict=True):
        rows[f"component: {name}"] = measure(part)
    for info in report["components"].values():
        info.pop("curves", None)
        info["seconds"] = round(float(info["seconds"]), 1)
    return {
        "fold": fold,
        "rows": rows,
        "teacher_report": report,
        "n_train": len(split.train),
        "n_test": len(split.test),
    }


def _mean_rows(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    names = list(folds[0]["rows"])
    out: dict[str, dict[str, float]] = {}
    for name in names:
        out[name] = {}
        for metric in [*METRICS, "train_seconds", "train_cpu_seconds"]:
            values = [f["rows"][name].get(metric) for f in folds]
            if all(isinstance(v, float) for v in values):
                out[name][metric] = float(np.mean(values))  # type: ignore[arg-type]
    return out


def _fmt(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.4f}"


def _table(rows: dict[str, dict[str, float]], *, extra: str | None = None) -> list[str]:
    cols = METRICS + ([extra] if extra else [])
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, metrics in rows.items():
        cells = [
            _fmt(metrics.get(c)) if c != "train_seconds" or c in metrics else "-" for c in cols
        ]
        if extra == "train_seconds" and "train_seconds" in metrics:
            cells[-1] = f"{metrics['train_seconds']:.0f}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _targets(mean: dict[str, dict[str, float]], run: dict[str, Any]) -> list[str]:
    teacher = mean.get("teacher (fitted weights)", {})
    lines = []
    if not teacher:
        return lines
    lines.append(
        f"- Ensemble RMSE {teacher['rmse']:.4f} <= 0.900: "
        f"**{'met' if teacher['rmse'] <= 0.900 else 'NOT met'}**"
    )
    svd = mean.get("surprise-svd")
    if svd:
        for name in ("mf", "xdeepfm", "autoint"):
            rmse = mean[f"component: {name}"]["rmse"]
            lines.append(
                f"- Component {name} RMSE {rmse:.4f} below Surprise SVD "
                f"{svd['rmse']:.4f}: **{'met' if rmse < svd['rmse'] else 'NOT met'}**"
            )
    als = mean.get("implicit-als")
    for metric in ("recall@10", "ndcg@10"):
        value = teacher[metric]
        if als:
            bar = 1.10 * als[metric]
            lines.append(
                f"- Ensemble {metric} {value:.4f} >= 1.10 x ALS {als[metric]:.4f} "
                f"= {bar:.4f}: **{'met' if value >= bar else 'NOT met'}**"
            )
        best = max(mean[f"component: {n}"][metric] for n in ("mf", "xdeepfm", "autoint"))
        lines.append(
            f"- Ensemble {metric} {value:.4f} above every component (best "
            f"{best:.4f}): **{'met' if value > best else 'NOT met'}**"
        )
    seconds = teacher.get("train_seconds")
    if seconds is not None:
        lines.append(
            f"- Teacher training wall time per fold {seconds:.0f} s < 600 s: "
            f"**{'met' if seconds < 600 else 'NOT met'}** (with {run['jobs']} fold(s) in "
            f"parallel and {run['threads']} torch thread(s) each on {run['cpus']} CPUs, "
            "shared with whatever else ran on the machine)"
        )
    cpu = teacher.get("train_cpu_seconds")
    if cpu is not None:
        lines.append(
            f"- Teacher training CPU time per fold {cpu:.0f} s (process time; "
            "below 600 s means under 10 minutes on one otherwise idle core)"
        )
    return lines


def write_markdown(result: dict[str, Any], path: Path, *, command: str) -> None:
    folds = result["folds"]
    mean = result["mean"]
    lines = [
        "# Teacher quality (protocol P)",
        "",
        "Generated by `bench/quality.py`; do not edit by hand. Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        "Protocol P: RMSE/MAE over the test pairs with predictions clipped to [1, 5]; full "
        "ranking over every item the user did not rate in training; relevant = test items "
        "rated >= 4; Recall@10 = hits / |relevant|, NDCG@10 with binary gains, HR@10, each the "
        "mean over users with at least one relevant test item; coverage@10 = share of the "
        "catalogue in at least one of those users' top-10 lists. Peers are measured in the "
        "same run: Surprise SVD and SVD++ with library defaults rank by predicted rating; "
        "implicit ALS (64 factors, regularisation 0.05, 20 iterations) on binary "
        "interactions has no rating prediction.",
        "",
        f"Run: {result['run']['when']}, {result['run']['platform']}, "
        f"{result['run']['cpus']} CPUs, torch threads per fold {result['run']['threads']}, "
        f"{result['run']['jobs']} fold(s) in parallel, quick={result['run']['quick']}, "
        f"seed {result['run']['seed']}.",
        "",
        f"## Mean over folds {', '.join(f['fold'] for f in folds)}",
        "",
        *_table(mean, extra="train_seconds"),
        "",
        "## Targets",
        "",
        *_targets(mean, result["run"]),
        "",
        "## Ensemble weights (fitted on a 10% validation split of each fold's training data)",
        "",
        "| fold | rating weights mf/xdeepfm/autoint + bias | score weights | "
        "valid RMSE default -> fitted | valid NDCG@10 default -> fitted |",
        "|---|---|---|---|---|",
    ]
    for f in folds:
        ens = f["teacher_report"]["ensemble"]
        d, ft = ens["default"], ens["fitted"]
        rw = "/".join(f"{w:.3f}" for w in ft["rating_weights"])
        sw = "/".join(f"{w:.2f}" for w in ft["score_weights"])
        lines.append(
            f"| {f['fold']} | {rw} + {ft['rating_bias']:.3f} | {sw} | "
            f"{d['rmse']:.4f} -> {ft['rmse']:.4f} | {d['ndcg@10']:.4f} -> {ft['ndcg@10']:.4f} |"
        )
    if folds and folds[0]["teacher_report"]["config"].get("refit_full"):
        lines += [
            "",
            "The validation split also chooses each component's epochs (per head); the "
            "components are then retrained on all of the fold's training data with those "
            "epochs and these weights, and that retrained teacher is the one measured above.",
        ]
    lines += ["", "## Per fold", ""]
    for f in folds:
        lines += [
            f"### {f['fold']} ({f['n_train']} train / {f['n_test']} test ratings)",
            "",
            *_table(f["rows"], extra="train_seconds"),
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:
        # Run as a file (python bench/quality.py) from a checkout that is not installed.
        sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        run = result["run"]
        # Runs from before the command was recorded: rebuild it from the recorded options.
        default = (
            "python -m bench.quality --data-dir $MOVIELENS_DIR"
            + (f" --jobs {run['jobs']}" if run["jobs"] > 1 else "")
            + (" --quick" if run["quick"] else "")
        )
        write_markdown(result, args.out_md, command=run.get("command", default))
        log.info("re-rendered %s from %s", args.out_md, args.from_json)
        return 0
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_fold, folds, [args] * len(folds)))
    else:
        results = [run_fold(fold, args) for fold in folds]
    given = list(argv if argv is not None else sys.argv[1:])
    shown: list[str] = []
    skip = False
    for arg in given:
        # Paths of this machine are not part of the recipe.
        if skip:
            skip = False
            continue
        if arg in _PATH_OPTIONS:
            skip = True
            continue
        if not arg.startswith(tuple(f"{option}=" for option in _PATH_OPTIONS)):
            shown.append(arg)
    command = " ".join(["python -m bench.quality --data-dir $MOVIELENS_DIR", *shown])
    result = {
        "run": {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "jobs": args.jobs,
            "quick": args.quick,
            "seed": args.seed,
            "seconds": time.perf_counter() - started,
            "command": command,
        },
        "folds": results,
        "mean": _mean_rows(results),
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    write_markdown(result, args.out_md, command=command)
    log.info("wrote %s and %s", args.out_md, args.out_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
