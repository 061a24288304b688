"""The evidence behind the MF component's history terms, on validation splits only.

    python -m bench.mf_history --data-dir $MOVIELENS_DIR [--folds u1,u2,u3] [--jobs 2]

For each fold, the teacher's own validation split (10% of the fold's training ratings,
`holdout` with seed 0; the test fold is never read) scores the MF component trained on
the other 90% in three forms: without history (the earlier MF, towers' L2 1e-3), with
the user's training items in the ranking vector (`MFConfig.history`, towers' L2 1e-2),
and with them in the rating factor too (`rating_history`: the current default). Each
row is the best validation epoch of each head, as the teacher's head selection keeps
them; EASE, tuned on the same split, is the reference. Writes bench/results/mf-history.md
and .json. `--variants` picks other forms of VARIANTS (sampled histories, Adam's rating
head; bench/results/history-sample/ used them), `--out` where they go.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# key: (row label, MFConfig fields). The sampled rows train on at most N items of each
# history per step (ComponentConfig.history_sample), which only catalogues with sparse
# tables get by default; "adam" rows train the rating head with Adam (and its history
# term), as MF does above bayes_rating.BAYES_MAX_ITEMS items.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": (
        "no history (towers' L2 1e-3)",
        {"history": False, "rating_history": False, "tower_l2": 1e-3},
    ),
    "ranking": ("history in the ranking vector", {"history": True, "rating_history": False}),
    "both": ("history in both heads (default)", {"history": True, "rating_history": True}),
    "both-s128": ("history in both heads, 128 per step", {"history_sample": 128}),
    "both-s32": ("history in both heads, 32 per step", {"history_sample": 32}),
    "adam": ("Adam's rating head, whole histories", {"bayes_rating": False}),
    "adam-s128": (
        "Adam's rating head, 128 per step",
        {"bayes_rating": False, "history_sample": 128},
    ),
    "adam-s32": ("Adam's rating head, 32 per step", {"bayes_rating": False, "history_sample": 32}),
}
DEFAULT_VARIANTS = "none,ranking,both"

log = logging.getLogger("bench.mf_history")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k folder")
    parser.add_argument("--folds", default="u1,u2,u3", help="comma-separated canonical folds")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--epochs", type=int, default=0, help="0 = MFConfig's (tests: fewer)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mf-history")
    return parser.parse_args(argv)


def run_one(task: tuple[Path, str, str, int]) -> dict[str, Any]:
    """One (fold, variant): the MF component's best validation epoch of each head."""
    import torch  # noqa: PLC0415

    from training.data import holdout, load_dataset, make_split  # noqa: PLC0415
    from training.models.configs import MFConfig  # noqa: PLC0415
    from training.train import train_component  # noqa: PLC0415

    data_dir, fold, variant, epochs = task
    torch.set_num_threads(1)
    ds = load_dataset(data_dir)
    fit, valid = holdout(make_split(ds, split=fold, data_dir=data_dir).train, seed=0)
    label, fields = VARIANTS[variant]
    config = replace(MFConfig(), **fields)
    config = replace(config, epochs=epochs or config.epochs)
    started = time.perf_counter()
    _, info = train_component(
        "mf", ds.feature_map, ds.tables, fit, config=config, valid=valid, progress=False
    )
    curves = info["curves"]
    ranking = max(curves, key=lambda p: p["valid_ndcg@10"])
    rating = min(curves, key=lambda p: p["valid_rmse"])
    return {
        "fold": fold,
        "model": f"MF, {label}",
        "ndcg@10": ranking["valid_ndcg@10"],
        "recall@10": ranking["valid_recall@10"],
        "ranking_epoch": int(ranking["epoch"]),
        "rmse": rating["valid_rmse"],
        "rating_epoch": int(rating["epoch"]),
        "seconds": time.perf_counter() - started,
    }


def run_ease(data_dir: Path, fold: str) -> dict[str, Any]:
    """EASE with lambda tuned on the split, scored on the same split."""
    from training import baselines  # noqa: PLC0415
    from training.data import load_dataset, make_split  # noqa: PLC0415

    ds = load_dataset(data_dir)
    fm = ds.feature_map
    # tune_on_validation holds out the same split (holdout, fraction 0.1, seed 0).
    train = make_split(ds, split=fold, data_dir=data_dir).train
    best, trials = baselines.tune_on_validation(
        baselines.ease, baselines.EASE_GRID, train, n_users=fm.n_users, n_items=fm.n_items
    )
    top = next(t for t in trials if t["lam"] == best["lam"])
    return {
        "fold": fold,
        "model": f"EASE (lambda {best['lam']} of {len(trials)})",
        "ndcg@10": top["ndcg@10"],
        "recall@10": top["recall@10"],
    }


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# MF history terms on validation splits",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/mf_history.py for the set-up:",
        "validation split only (10% of each fold's training ratings); NDCG@10 and Recall@10",
        "at the best ranking epoch, RMSE at the best rating epoch (of 20).",
        "",
        "| fold | model | ndcg@10 | recall@10 | rmse | epochs (ranking, rating) | seconds |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        rmse = f"{r['rmse']:.4f}" if "rmse" in r else "-"
        epochs = f"{r['ranking_epoch']}, {r['rating_epoch']}" if "rating_epoch" in r else "-"
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        lines.append(
            f"| {r['fold']} | {r['model']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | "
            f"{rmse} | {epochs} | {secs} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(
            f"unknown variant(s) {', '.join(unknown)}: pick from {', '.join(VARIANTS)}"
        )
    tasks = [(args.data_dir, f, variant, args.epochs) for f in folds for variant in variants]
    with multiprocessing.get_context("spawn").Pool(max(1, args.jobs)) as pool:
        trained = pool.map(run_one, tasks, chunksize=1)
    rows = []
    for fold in folds:
        rows.append(run_ease(args.data_dir, fold))
        rows.extend(r for r in trained if r["fold"] == fold)
    command = f"python -m bench.mf_history --data-dir $MOVIELENS_DIR --folds {args.folds}"
    command += f" --jobs {args.jobs}" + (f" --epochs {args.epochs}" if args.epochs else "")
    if args.variants != DEFAULT_VARIANTS:
        command += f" --variants {args.variants} --out {args.out}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(rows, command), encoding="utf-8")
    log.info("wrote %s", args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
