"""Which validation objective should pick the teacher's ranking blend: a check on
held-back data only.

    python -m bench.blend --data-dir $MOVIELENS_DIR [--folds u1,u2,u3] [--jobs 2]
        [--seeds 0] [--rating-scores 0.05,0.1]

The teacher blends its components' standardised tower scores with weights on a simplex
grid, chosen by NDCG@10 on its validation split (`train.fit_ensemble_weights`). Per fold,
the three components train the teacher's way on its selection split (`fit`, each head kept
at its best `valid` epoch; no refit), as bench.negatives trains them, and every grid point
is scored under protocol P on `valid` and on a further tenth of the fold's training
ratings held back first (`check`, seed 1; the test folds are never read). Each objective
then picks a point from `valid` alone (ties: the point nearest the default weights), and
the table gives what that point scores on `check`. "best on check" is no objective: it
is the most any choice of weights could reach, the room the blend has.

`--standardise` names how each component's scores are put on one scale before they are
weighted: `catalogue` (the teacher's: one mean and spread per component, over the
validation users' rows) or `user` (each user's row of scores to zero mean and unit spread
over the catalogue, as score fusion in retrieval normalises per query). Several, comma-
separated, are scored on the same trained components and compared with the first.

`--rating-scores` adds MF's rating, standardised as the scores are, to the ranking score
with each given weight g on top of the teacher's pick and of the default weights
(`TeacherConfig.rating_score_weight`), each compared with g = 0 on the same components.
`--seeds` trains each fold once per teacher seed (the selection split and the components'
initialisation; the held-back tenth stays the same), each (fold, seed) counted on its own.
Writes bench/results/blend.md and .json.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench._heldout import COMPONENTS, ROOT, held_back_splits, run_pool, write_outputs

if TYPE_CHECKING:
    from training.data import Dataset
    from training.train import TeacherConfig

log = logging.getLogger("bench.blend")
# Validation value each objective maximises; "default" takes the default weights as they are.
OBJECTIVES: dict[str, Callable[[dict[str, float]], float]] = {
    "ndcg@10 (the teacher's)": lambda m: m["ndcg@10"],
    "recall@10": lambda m: m["recall@10"],
    "ndcg@10 + recall@10": lambda m: m["ndcg@10"] + m["recall@10"],
}
BASELINE = "ndcg@10 (the teacher's)"
METRICS = ("ndcg@10", "recall@10")
STANDARDISE = ("catalogue", "user")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k folder")
    parser.add_argument("--folds", default="u1,u2,u3", help="comma-separated folds")
    parser.add_argument("--jobs", type=int, default=2, help="components trained in parallel")
    parser.add_argument("--step", type=float, default=0.05, help="grid step of the weights")
    parser.add_argument(
        "--standardise",
        default="catalogue",
        help=f"comma-separated ways to scale the scores ({', '.join(STANDARDISE)}); the first is "
        "the baseline",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated teacher seeds")
    parser.add_argument(
        "--rating-scores", default="", help="comma-separated weights g of MF's rating (> 0)"
    )
    parser.add_argument("--quick", action="store_true", help="the --quick teacher (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "blend")
    args = parser.parse_args(argv)
    args.fold_list = [f.strip() for f in args.folds.split(",") if f.strip()]
    if not args.fold_list:
        parser.error("--folds: at least one fold")
    args.standardise_list = list(dict.fromkeys(s.strip() for s in args.standardise.split(",")))
    unknown = [s for s in args.standardise_list if s not in STANDARDISE]
    if unknown or not args.standardise_list:
        parser.error(
            f"--standardise: choose from {', '.join(STANDARDISE)}, got {args.standardise!r}"
        )
    if not 0.0 < args.step <= 0.5:
        parser.error(f"--step must lie in (0, 0.5], got {args.step}")
    try:
        args.seed_list = [int(x) for x in args.seeds.split(",") if x.strip()]
        args.gammas = [float(x) for x in args.rating_scores.split(",") if x.strip()]
    except ValueError:
        parser.error(
            f"--seeds and --rating-scores take numbers: {args.seeds!r}, {args.rating_scores!r}"
        )
    if not args.seed_list or any(g <= 0.0 for g in args.gammas):
        parser.error("--seeds: at least one seed; --rating-scores: weights above 0")
    return args


def unit(fold: str, seed: int, seeds: list[int]) -> str:
    """A (fold, seed) cell's label: the fold alone when there is one seed."""
    return fold if len(seeds) == 1 else f"{fold}/s{seed}"


def component_scores(task: tuple[Path, str, str, bool, int]) -> dict[str, Any]:
    """One component of one fold and teacher seed trained on the selection split: its
    tower scores of every item for every user, [n_users + 1, n_items], and MF's ratings."""
    import torch  # noqa: PLC0415

    from training.data import load_dataset  # noqa: PLC0415
    from training.models.mf import BiasedMF  # noqa: PLC0415
    from training.train import TeacherConfig, train_component  # noqa: PLC0415

    data_dir, fold, name, quick, seed = task
    torch.set_num_threads(1)
    ds = load_dataset(data_dir)
    teacher = TeacherConfig(seed=seed).quick() if quick else TeacherConfig(seed=seed)
    _, _, fit, valid = held_back_splits(ds, data_dir, fold, teacher)
    model, info = train_component(
        name,
        ds.feature_map,
        ds.tables,
        fit,
        config=getattr(teacher, name),
        valid=valid,
        seed=teacher.seed + COMPONENTS.index(name),  # as train_teacher seeds each component
        progress=False,
    )
    users = np.arange(ds.feature_map.n_users + 1)
    with torch.no_grad():
        scores = model.score_matrix(users, ds.tables)[:, 1:].numpy().astype(np.float32)
        mf = model if isinstance(model, BiasedMF) else None
        rated = None if mf is None else mf.rating_matrix(users, ds.tables).numpy()
    log.info("%s %s seed %d trained, head epochs %s", fold, name, seed, info["head_epochs"])
    return {"fold": fold, "seed": seed, "component": name, "scores": scores, "ratings": rated}


Splits = dict[str, tuple[Any, Any, Any]]


def held_back(
    ds: Dataset, data_dir: Path, fold: str, teacher: TeacherConfig
) -> tuple[Splits, np.ndarray]:
    """{split: (ratings seen, ratings ranked, their SeenIndex)} for `valid` and `check`, and
    the validation users who liked an item (the teacher standardises over them)."""
    from training.seen import SeenIndex  # noqa: PLC0415

    fm = ds.feature_map
    train, check, fit, valid = held_back_splits(ds, data_dir, fold, teacher)
    splits = {
        "valid": (fit, valid, SeenIndex.from_ratings(fit, n_users=fm.n_users, n_items=fm.n_items)),
        "check": (
            train,
            check,
            SeenIndex.from_ratings(train, n_users=fm.n_users, n_items=fm.n_items),
        ),
    }
    return splits, np.unique(valid.user[valid.rating >= 4.0])


def _scored(
    ds: Dataset, splits: Splits, blend: Callable[[np.ndarray], np.ndarray]
) -> dict[str, dict[str, float]]:
    """Protocol-P ranking metrics of the scores `blend(users)` on each split."""
    from training.evaluate import ranking_metrics  # noqa: PLC0415

    fm = ds.feature_map
    out = {}
    for split, (seen_ratings, test, seen) in splits.items():
        metrics = ranking_metrics(
            blend, train=seen_ratings, test=test, n_users=fm.n_users, n_items=fm.n_items, seen=seen
        )
        out[split] = {m: float(metrics[m]) for m in METRICS}
    return out


def grid_rows(
    ds: Dataset,
    held: tuple[Splits, np.ndarray],
    mats: list[np.ndarray],
    *,
    step: float,
    standardise: str,
    label: str,
) -> list[dict[str, Any]]:
    """Every grid point's protocol-P ranking on `valid` and on `check` of one cell's
    `held_back` splits (rows labelled `label`), the scores standardised per `standardise`."""
    from training.train import simplex_grid  # noqa: PLC0415

    splits, liked = held
    z = standardised(mats, liked, standardise)
    rows = []
    for point in simplex_grid(step):
        w = np.asarray(point)

        def blend(us: np.ndarray, w: np.ndarray = w) -> np.ndarray:
            return np.asarray(np.tensordot(w, z[:, us], axes=1))  # [b, n_items]

        row: dict[str, Any] = {"fold": label, "standardise": standardise}
        rows.append({**row, "weights": list(point), **_scored(ds, splits, blend)})
    return rows


def rating_rows(
    ds: Dataset,
    held: tuple[Splits, np.ndarray],
    mats: list[np.ndarray],
    *,
    pick: list[float],
    gammas: list[float],
    standardise: str,
    label: str,
) -> list[dict[str, Any]]:
    """MF's rating (`mats[3]`) added with each weight g in `[0, *gammas]` to the teacher's
    `pick` and to the default weights: each one's ranking on `valid` and `check`."""
    from training.models.ensemble import DEFAULT_WEIGHTS  # noqa: PLC0415

    splits, liked = held
    z = standardised(mats, liked, standardise)  # [3 components + MF's rating, users, items]
    rows = []
    for weights, w in (("teacher's pick", pick), ("default", list(DEFAULT_WEIGHTS))):
        for g in (0.0, *gammas):
            coef = np.asarray([*w, g])

            def blend(us: np.ndarray, coef: np.ndarray = coef) -> np.ndarray:
                return np.asarray(np.tensordot(coef, z[:, us], axes=1))  # [b, n_items]

            row = {"fold": label, "weights": weights, "blend": w, "g": g}
            rows.append({**row, **_scored(ds, splits, blend)})
    return rows


def rating_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per weights and g: the mean check metrics over the cells and the change against
    g = 0 with the same weights on the same cell, with the cells it raised."""
    base = {(r["fold"], r["weights"]): r for r in rows if r["g"] == 0.0}
    out = []
    for weights, g in dict.fromkeys((r["weights"], r["g"]) for r in rows):
        cells = [r for r in rows if (r["weights"], r["g"]) == (weights, g)]
        entry: dict[str, Any] = {"weights": weights, "g": g, "cells": len(cells)}
        for m in METRICS:
            deltas = [r["check"][m] - base[(r["fold"], weights)]["check"][m] for r in cells]
            entry[m] = statistics.fmean(r["check"][m] for r in cells)
            entry[f"valid_{m}"] = statistics.fmean(r["valid"][m] for r in cells)
            entry[f"{m}_delta"] = statistics.fmean(deltas)
            entry[f"{m}_better_on"] = sum(d > 0 for d in deltas)
        out.append(entry)
    return out


def standardised(mats: list[np.ndarray], liked: np.ndarray, how: str) -> np.ndarray:
    """The score matrices on one scale: [len(mats), n_users + 1, n_items] float64.

    `catalogue`: one mean and spread per component over the validation users' rows (`liked`),
    as `fit_ensemble_weights` standardises. `user`: each row to zero mean and unit spread.
    """
    if how == "user":
        rows = [m.astype(np.float64) for m in mats]
        return np.stack(
            [(m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True).clip(1e-6) for m in rows]
        )
    z = np.stack([(m - m[liked].mean()) / max(float(m[liked].std()), 1e-6) for m in mats])
    return z.astype(np.float64)


def choose(rows: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The grid row an objective picks from the validation metrics (ties: the point
    nearest the default weights); "default" and "best on check" as named."""
    from training.models.ensemble import DEFAULT_WEIGHTS  # noqa: PLC0415

    def distance(row: dict[str, Any]) -> float:
        return float(np.abs(np.asarray(row["weights"]) - np.asarray(DEFAULT_WEIGHTS)).sum())

    if objective == "default":
        return min(rows, key=distance)
    if objective == "best on check":
        return max(rows, key=lambda r: (r["check"]["ndcg@10"], -distance(r)))
    value = OBJECTIVES[objective]
    return max(rows, key=lambda r: (value(r["valid"]), -distance(r)))


def summary(
    rows: list[dict[str, Any]], folds: list[str], standardise: Sequence[str] = ("catalogue",)
) -> list[dict[str, Any]]:
    """Per way of standardising and objective: each fold's pick and its check metrics,
    their mean, and the change against the teacher's own objective on the same fold, with
    the first way of standardising."""

    def fold_rows(how: str, fold: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["fold"] == fold and r.get("standardise", "catalogue") == how]

    base = [choose(fold_rows(standardise[0], f), BASELINE) for f in folds]
    out = []
    for how in standardise:
        for objective in [*OBJECTIVES, "default", "best on check"]:
            picks = [choose(fold_rows(how, f), objective) for f in folds]
            entry: dict[str, Any] = {"standardise": how, "objective": objective, "picks": picks}
            for m in METRICS:
                entry[m] = statistics.fmean(p["check"][m] for p in picks)
                deltas = [p["check"][m] - b["check"][m] for p, b in zip(picks, base, strict=True)]
                entry[f"{m}_delta"] = statistics.fmean(deltas)
                entry[f"{m}_better_on"] = sum(d > 0 for d in deltas)
            out.append(entry)
    return out


def render(
    command: str,
    totals: list[dict[str, Any]],
    folds: list[str],
    rated: list[dict[str, Any]] | None = None,
) -> str:
    lines = [
        "# The teacher's ranking blend: validation objectives on held-back data",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/blend.py for the set-up:",
        "weights picked on each fold's validation split, scored on the held-back tenth.",
        "",
        "| standardised per | objective | " + " | ".join(f"{f} weights" for f in folds)
        + " | ndcg@10 | recall@10 | ndcg@10 change (better on) | recall@10 change |",
        "|---|---|" + "---|" * len(folds) + "---:|---:|---|---|",
    ]  # fmt: skip
    for t in totals:
        weights = " | ".join("/".join(f"{w:.2f}" for w in p["weights"]) for p in t["picks"])
        changes = " | ".join(
            f"{t[f'{m}_delta']:+.4f} ({t[f'{m}_better_on']}/{len(folds)})" for m in METRICS
        )
        lines.append(
            f"| {t['standardise']} | {t['objective']} | {weights} | {t['ndcg@10']:.4f} | "
            f"{t['recall@10']:.4f} | {changes} |"
        )
    lines += [
        "",
        "Weights: MF / xDeepFM / AutoInt; changes against the teacher's objective with the",
        f"scores standardised per {totals[0]['standardise']}.",
    ]
    if rated:
        lines += render_rating(rated)
    return "\n".join(lines) + "\n"


def render_rating(rated: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## MF's rating in the ranking score",
        "",
        "score = weights . standardised component scores + g * MF's standardised rating;",
        "changes against g = 0 with the same weights, cell by cell (fold, seed).",
        "",
        "| weights | g | cells | valid ndcg@10 | ndcg@10 | recall@10 | ndcg@10 change (better on) "
        "| recall@10 change (better on) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for t in rated:
        changes = " | ".join(
            f"{t[f'{m}_delta']:+.4f} ({t[f'{m}_better_on']}/{t['cells']})" for m in METRICS
        )
        lines.append(
            f"| {t['weights']} | {t['g']:.2f} | {t['cells']} | {t['valid_ndcg@10']:.4f} | "
            f"{t['ndcg@10']:.4f} | {t['recall@10']:.4f} | {changes} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from training.data import load_dataset  # noqa: PLC0415
    from training.train import TeacherConfig  # noqa: PLC0415

    cells = [(f, seed) for seed in args.seed_list for f in args.fold_list]
    tasks = [(args.data_dir, f, name, args.quick, seed) for f, seed in cells for name in COMPONENTS]
    trained = run_pool(component_scores, tasks, args.jobs)
    ds = load_dataset(args.data_dir)
    found = {(t["fold"], t["seed"], t["component"]): t for t in trained}
    rows: list[dict[str, Any]] = []
    rated: list[dict[str, Any]] = []
    for fold, seed in cells:
        teacher = TeacherConfig(seed=seed)
        teacher = teacher.quick() if args.quick else teacher
        label = unit(fold, seed, args.seed_list)
        mats = [found[(fold, seed, name)]["scores"] for name in COMPONENTS]
        held = held_back(ds, args.data_dir, fold, teacher)
        for how in args.standardise_list:
            rows += grid_rows(ds, held, mats, step=args.step, standardise=how, label=label)
        if args.gammas:
            how = args.standardise_list[0]
            mine = [r for r in rows if r["fold"] == label and r["standardise"] == how]
            rated += rating_rows(
                ds,
                held,
                [*mats, found[(fold, seed, "mf")]["ratings"]],
                pick=choose(mine, BASELINE)["weights"],
                gammas=args.gammas,
                standardise=how,
                label=label,
            )
    labels = [unit(f, seed, args.seed_list) for f, seed in cells]
    totals = summary(rows, labels, args.standardise_list)
    rated_totals = rating_summary(rated) if rated else []
    command = "python -m bench.blend " + shlex.join(argv if argv is not None else sys.argv[1:])
    payload = {
        "command": command,
        "rows": rows,
        "summary": totals,
        "rating_rows": rated,
        "rating_summary": rated_totals,
    }
    write_outputs(args.out, payload, render(command, totals, labels, rated_totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
