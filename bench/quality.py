"""Quality benchmark: the ensemble teacher against its peers under protocol P.

    python -m bench.quality --data-dir /path/to/ml-100k [--folds u1,u2,u3,u4,u5] [--jobs 2]
                            [--seeds 3]

On each canonical ml-100k fold and each of --seeds seeds it trains the teacher (its three
components and the ensemble), and measures in the same run the popularity baseline,
scikit-surprise SVD and SVD++ (library defaults), implicit ALS (64 factors, regularisation
0.05, 20 iterations), and two peers tuned on the teacher's validation split of the fold's
training data (never the test fold): EASE (lambda) and implicit ALS (factors,
regularisation, alpha). Headline figures are the mean over seeds of the mean over folds,
with the standard deviation over seeds. Writes docs/QUALITY.md and
bench/results/quality.json. --quick is a smoke run (small models, few epochs) whose numbers
mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import functools
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

if __package__ in (None, ""):
    # Run as a file (python bench/quality.py) from a checkout that is not installed.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._spread import fmt_spread, seed_list, summarise

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["rmse", "mae", "recall@10", "ndcg@10", "hr@10", "coverage@10"]
PEERS = (
    "popularity",
    "surprise-svd",
    "surprise-svdpp",
    "implicit-als",
    "implicit-als-tuned",
    "ease",
)
TEACHER_ROWS = (
    "teacher (fitted weights)",
    "teacher (default 0.4/0.4/0.2)",
    "teacher (fitted weights, no rating term)",
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
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds per fold (--seed, --seed+1, ...); figures are means with their spread",
    )
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
        "--peers-only",
        action="store_true",
        help="measure the peers only (no teacher): the peer rows of the table in minutes",
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
    parser.add_argument(
        "--out-md",
        type=Path,
        default=None,
        help="default docs/QUALITY.md (bench/results/peers.md with --peers-only)",
    )
    parser.add_argument(
        "--out-json",
        type=Path,
        default=None,
        help="default bench/results/quality.json (bench/results/peers.json with --peers-only)",
    )
    args = parser.parse_args(argv)
    if args.data_dir is None and args.from_json is None:
        parser.error("--data-dir is required (or set MOVIELENS_DIR)")
    if not args.threads:
        args.threads = max(1, 2 // max(1, args.jobs))
    # A peers-only run never overwrites the teacher's page.
    if args.out_md is None:
        args.out_md = ROOT / ("bench/results/peers.md" if args.peers_only else "docs/QUALITY.md")
    if args.out_json is None:
        name = "peers.json" if args.peers_only else "quality.json"
        args.out_json = ROOT / "bench" / "results" / name
    return args


def _peer_rows(
    peers: list[str], split: Any, args: argparse.Namespace, *, seed: int, kw: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics of the selected peers on one fold, and what the tuned ones chose."""
    from training import baselines  # noqa: PLC0415

    rows: dict[str, dict[str, float]] = {}
    tuning: dict[str, Any] = {}
    train, test = split.train, split.test
    if "popularity" in peers:
        rows["popularity"] = baselines.popularity(train, test, **kw)
    for kind in ("svd", "svdpp"):
        if f"surprise-{kind}" in peers:
            rows[f"surprise-{kind}"] = baselines.surprise_model(kind, train, test, seed=seed, **kw)
    if "implicit-als" in peers:
        rows["implicit-als"] = baselines.implicit_als(
            train, test, seed=seed, threads=args.threads, **kw
        )
    tuned: dict[str, tuple[Any, dict[str, Any]]] = {
        "ease": (baselines.ease, baselines.EASE_GRID),
        "implicit-als-tuned": (
            functools.partial(baselines.implicit_als, seed=seed, threads=args.threads),
            baselines.ALS_GRID,
        ),
    }
    for name, (fit, full_grid) in tuned.items():
        if name not in peers:
            continue
        # A smoke run tries the first two settings of each hyperparameter only.
        grid = {k: v[:2] for k, v in full_grid.items()} if args.quick else full_grid
        started = time.perf_counter()
        # The teacher's validation split (same fraction and seed): never the test fold.
        best, trials = baselines.tune_on_validation(fit, grid, train, seed=seed, **kw)
        tune_seconds = time.perf_counter() - started
        rows[name] = fit(train, test, **best, **kw)
        tuning[name] = {"chosen": best, "trials": trials, "seconds": tune_seconds}
    return rows, tuning


def run_fold(task: tuple[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Trains and measures every model on one fold with one seed; metrics per model."""
    fold, seed = task
    # Imported here: main() first makes the checkout importable when run as a file.
    import torch  # noqa: PLC0415

    from bench._teacher_cache import (  # noqa: PLC0415
        save_teacher,
        teacher_cache_path,
        teacher_config,
    )
    from training.data import load_dataset, make_split  # noqa: PLC0415
    from training.evaluate import evaluate_model  # noqa: PLC0415
    from training.models.ensemble import DEFAULT_WEIGHTS  # noqa: PLC0415
    from training.train import train_teacher  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {fold} s{seed} %(name)s %(message)s"
    )
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data_dir)
    split = make_split(ds, split=fold, data_dir=args.data_dir)
    fm = ds.feature_map
    kw: dict[str, Any] = {"n_users": fm.n_users, "n_items": fm.n_items}
    peers = [p for p in args.peers.split(",") if p]
    rows, tuning = _peer_rows(peers, split, args, seed=seed, kw=kw)
    entry = {
        "fold": fold,
        "seed": seed,
        "rows": rows,
        "tuning": tuning,
        "teacher_report": None,
        "n_train": len(split.train),
        "n_test": len(split.test),
    }
    if args.peers_only:
        return entry
    config = teacher_config(seed=seed, threads=args.threads, quick=args.quick)
    started, cpu_started = time.perf_counter(), time.process_time()
    teacher, report = train_teacher(ds, split.train, config=config)
    train_seconds = time.perf_counter() - started
    # CPU time of this process: comparable across runs whatever else shares the machine.
    train_cpu_seconds = time.process_time() - cpu_started
    if args.save_teachers is not None:
        save_teacher(
            teacher,
            teacher_cache_path(args.save_teachers, fold, quick=args.quick, seed=seed),
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
    # The same teacher ranking by its components' towers alone (g = 0): the change the
    # rating term makes, paired on the same trained components.
    unrated = copy.deepcopy(teacher)
    unrated.rating_score_weight.zero_()
    rows["teacher (fitted weights, no rating term)"] = measure(unrated)
    for name, part in zip(("mf", "xdeepfm", "autoint"), teacher.components, strict=True):
        rows[f"component: {name}"] = measure(part)
    for info in report["components"].values():
        info.pop("curves", None)
        info["seconds"] = round(float(info["seconds"]), 1)
    return {**entry, "teacher_report": report}


SECONDS = ("train_seconds", "train_cpu_seconds")


def _mean_rows(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean over seeds of the per-seed mean over folds (each metric a plain number)."""
    spread = summarise(folds, metrics=[*METRICS, *SECONDS])
    return {name: {m: s["mean"] for m, s in ms.items()} for name, ms in spread.items()}


def _fmt(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.4f}"


def _table(spread: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One row per model: each metric as mean ± std over seeds, then training seconds."""
    cols = [*METRICS, "train_seconds"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, metrics in spread.items():
        cells = [fmt_spread(metrics.get(c)) for c in METRICS]
        seconds = metrics.get("train_seconds")
        cells.append(f"{seconds['mean']:.0f}" if seconds and seconds.get("n") else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _verdict(ok: bool) -> str:
    return f"**{'met' if ok else 'NOT met'}**"


def _peer_targets(mean: dict[str, dict[str, float]]) -> list[str]:
    """The teacher's ranking against the peers: 1.10x default ALS, 1.05x each tuned peer."""
    teacher = mean["teacher (fitted weights)"]
    lines = []
    bars = (
        ("implicit-als", "ALS", 1.10),
        ("ease", "EASE (tuned)", 1.05),
        ("implicit-als-tuned", "ALS (tuned)", 1.05),
    )
    for metric in ("recall@10", "ndcg@10"):
        value = teacher[metric]
        for row, label, factor in bars:
            peer = mean.get(row)
            if peer and metric in peer:
                bar = factor * peer[metric]
                lines.append(
                    f"- Ensemble {metric} {value:.4f} >= {factor:.2f} x {label} "
                    f"{peer[metric]:.4f} = {bar:.4f}: {_verdict(value >= bar)}"
                )
        best = max(mean[f"component: {n}"][metric] for n in ("mf", "xdeepfm", "autoint"))
        lines.append(
            f"- Ensemble {metric} {value:.4f} above every component (best "
            f"{best:.4f}): {_verdict(value > best)}"
        )
    return lines


def _targets(mean: dict[str, dict[str, float]], run: dict[str, Any]) -> list[str]:
    teacher = mean.get("teacher (fitted weights)", {})
    lines: list[str] = []
    if not teacher:
        return lines
    for bound in (0.900, 0.893):
        lines.append(
            f"- Ensemble RMSE {teacher['rmse']:.4f} <= {bound:.3f}: "
            f"{_verdict(teacher['rmse'] <= bound)}"
        )
    svd = mean.get("surprise-svd")
    if svd:
        for name in ("mf", "xdeepfm", "autoint"):
            rmse = mean[f"component: {name}"]["rmse"]
            lines.append(
                f"- Component {name} RMSE {rmse:.4f} below Surprise SVD "
                f"{svd['rmse']:.4f}: {_verdict(rmse < svd['rmse'])}"
            )
    lines += _peer_targets(mean)
    seconds = teacher.get("train_seconds")
    if seconds is not None:
        lines.append(
            f"- Teacher training wall time per fold {seconds:.0f} s < 600 s: "
            f"{_verdict(seconds < 600)} (with {run['jobs']} fold(s) in "
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


def _tuning_lines(folds: list[dict[str, Any]]) -> list[str]:
    """What each tuned peer chose on each fold's validation split."""
    names = list(dict.fromkeys(n for f in folds for n in f.get("tuning", {})))
    if not names:
        return []
    lines = [
        "## Peers tuned on validation",
        "",
        "Each setting of the grid is fitted on 90% of the fold's training data and scored "
        "(NDCG@10, protocol P) on the other 10%: the teacher's own validation split, never "
        "the test fold. The best one is refitted on all the fold's training data.",
        "",
        "| fold | seed | " + " | ".join(names) + " |",
        "|---|---:|" + "---|" * len(names),
    ]
    for f in folds:
        cells = []
        for name in names:
            info = f.get("tuning", {}).get(name)
            if info is None:
                cells.append("-")
                continue
            chosen = ", ".join(f"{k} {v:g}" for k, v in info["chosen"].items())
            best = max(t["ndcg@10"] for t in info["trials"])
            cells.append(f"{chosen} (valid NDCG@10 {best:.4f}, {len(info['trials'])} tried)")
        lines.append(f"| {f['fold']} | {f.get('seed', 0)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _weights_lines(folds: list[dict[str, Any]]) -> list[str]:
    folds = [f for f in folds if f.get("teacher_report")]
    if not folds:
        return []
    lines = [
        "## Ensemble weights (fitted on a 10% validation split of each fold's training data)",
        "",
        "| fold | seed | rating weights mf/xdeepfm/autoint + bias | score weights + g "
        "| valid RMSE default -> fitted | valid NDCG@10 default -> fitted -> with g |",
        "|---|---:|---|---|---|---|",
    ]
    for f in folds:
        ens = f["teacher_report"]["ensemble"]
        # Runs before the rating term (TeacherConfig.rating_score_weight) had no "teacher".
        d, ft = ens["default"], ens["fitted"]
        teacher = ens.get("teacher", ft)
        rw = "/".join(f"{w:.3f}" for w in ft["rating_weights"])
        sw = "/".join(f"{w:.2f}" for w in ft["score_weights"])
        g = teacher.get("rating_score_weight", 0.0)
        lines.append(
            f"| {f['fold']} | {f.get('seed', 0)} | {rw} + {ft['rating_bias']:.3f} | {sw} + {g:g} "
            f"| {d['rmse']:.4f} -> {ft['rmse']:.4f} | {d['ndcg@10']:.4f} -> "
            f"{ft['ndcg@10']:.4f} -> {teacher['ndcg@10']:.4f} |"
        )
    if folds and folds[0]["teacher_report"]["config"].get("refit_full"):
        lines += [
            "",
            "The validation split also chooses each component's epochs (per head; MF's "
            "sampled rating head has none, it is drawn again on all the data); the "
            "components are then retrained on all of the fold's training data with those "
            "epochs and these weights, and that retrained teacher is the one measured above.",
        ]
    return lines


MF_NOTE = (
    " The teacher's MF component holds each user's training items in its ranking vectors "
    "(SVD++'s implicit term); bench/results/mf-history.md has the validation evidence for "
    "it. Its rating head is the mean of a Gibbs sampler's draws (Bayesian MF with a prior "
    "per field, `MFConfig.bayes_rating`); bench/results/bayes-rating.md has the validation "
    "evidence for that. xDeepFM's user tower holds them too (ranking head only); "
    "bench/results/xdeepfm-history.md has the evidence for that. The teacher's ranking "
    "score adds MF's standardised rating with weight g (`TeacherConfig.rating_score_weight`, "
    "chosen on held-back data: bench/results/blend-rating.md); the row 'no rating term' is "
    "the same trained teacher with g = 0."
)


def write_markdown(result: dict[str, Any], path: Path, *, command: str) -> None:
    folds = result["folds"]
    run = result["run"]
    seeds = sorted({int(f.get("seed", 0)) for f in folds})
    fold_names = list(dict.fromkeys(f["fold"] for f in folds))
    spread = summarise(folds, metrics=[*METRICS, *SECONDS])
    targets = _targets(result["mean"], run)
    teacher = any(f.get("teacher_report") for f in folds)
    lines = [
        f"# {'Teacher' if teacher else 'Peer'} quality (protocol P)",
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
        "interactions has no rating prediction; `implicit-als-tuned` (factors, "
        "regularisation, alpha) and `ease` (EASE, Steck 2019, lambda) are tuned on the "
        "validation split below." + (MF_NOTE if teacher else ""),
        "",
        f"Run: {run['when']}, {run['platform']}, {run['cpus']} CPUs, torch threads per fold "
        f"{run['threads']}, {run['jobs']} fold(s) in parallel, quick={run['quick']}, "
        f"seed(s) {', '.join(str(s) for s in seeds)}.",
        "",
        f"## Mean over folds {', '.join(fold_names)} and {len(seeds)} seed(s)",
        "",
        "Each figure: the mean over seeds of the mean over folds, ± the standard deviation "
        "over seeds of that fold mean (no ± with one seed). A difference inside the spread "
        "is not a result.",
        "",
        *_table(spread),
        "",
        *(["## Targets", "", *targets, ""] if targets else []),
        *_tuning_lines(folds),
        *_weights_lines(folds),
        "",
        "## Per fold (mean ± std over seeds)",
        "",
    ]
    for fold in fold_names:
        mine = [f for f in folds if f["fold"] == fold]
        lines += [
            f"### {fold} ({mine[0]['n_train']} train / {mine[0]['n_test']} test ratings)",
            "",
            *_table(summarise(mine, metrics=[*METRICS, *SECONDS])),
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _recorded_command(argv: list[str] | None) -> str:
    """The command line as run, without this machine's paths."""
    given = list(argv if argv is not None else sys.argv[1:])
    shown: list[str] = []
    skip = False
    for arg in given:
        if skip:
            skip = False
            continue
        if arg in _PATH_OPTIONS:
            skip = True
            continue
        if not arg.startswith(tuple(f"{option}=" for option in _PATH_OPTIONS)):
            shown.append(arg)
    return " ".join(["python -m bench.quality --data-dir $MOVIELENS_DIR", *shown])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    seeds = seed_list(args.seed, args.seeds)
    tasks = [(fold, seed) for seed in seeds for fold in folds]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_fold, tasks, [args] * len(tasks)))
    else:
        results = [run_fold(task, args) for task in tasks]
    command = _recorded_command(argv)
    result = {
        "run": {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "jobs": args.jobs,
            "quick": args.quick,
            "seed": args.seed,
            "seeds": seeds,
            "seconds": time.perf_counter() - started,
            "command": command,
        },
        "folds": results,
        "mean": _mean_rows(results),
        "spread": summarise(results, metrics=[*METRICS, *SECONDS]),
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    write_markdown(result, args.out_md, command=command)
    log.info("wrote %s and %s", args.out_md, args.out_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
