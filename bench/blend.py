"""Which validation objective should pick the teacher's ranking blend: a check on
held-back data only.

    python -m bench.blend --data-dir $MOVIELENS_DIR [--folds u1,u2,u3] [--jobs 2]

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
separated, are scored on the same trained components and compared with the first. Writes
bench/results/blend.md and .json.
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
    return args


def component_scores(task: tuple[Path, str, str, bool]) -> dict[str, Any]:
    """One component of one fold trained on the selection split: its tower scores of
    every item for every user, [n_users + 1, n_items]."""
    import torch  # noqa: PLC0415

    from training.data import load_dataset  # noqa: PLC0415
    from training.train import TeacherConfig, train_component  # noqa: PLC0415

    data_dir, fold, name, quick = task
    torch.set_num_threads(1)
    ds = load_dataset(data_dir)
    teacher = TeacherConfig().quick() if quick else TeacherConfig()
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
    log.info("%s %s trained, head epochs %s", fold, name, info["head_epochs"])
    return {"fold": fold, "component": name, "scores": scores}


def grid_rows(
    ds: Dataset,
    data_dir: Path,
    fold: str,
    teacher: TeacherConfig,
    mats: list[np.ndarray],
    *,
    step: float,
    standardise: str = "catalogue",
) -> list[dict[str, Any]]:
    """Every grid point's protocol-P ranking on `valid` and on `check` for one fold, the
    scores standardised per `standardise` (module docstring)."""
    from training.evaluate import ranking_metrics  # noqa: PLC0415
    from training.seen import SeenIndex  # noqa: PLC0415
    from training.train import simplex_grid  # noqa: PLC0415

    fm = ds.feature_map
    train, check, fit, valid = held_back_splits(ds, data_dir, fold, teacher)
    z = standardised(mats, np.unique(valid.user[valid.rating >= 4.0]), standardise)
    splits = {
        "valid": (fit, valid, SeenIndex.from_ratings(fit, n_users=fm.n_users, n_items=fm.n_items)),
        "check": (
            train,
            check,
            SeenIndex.from_ratings(train, n_users=fm.n_users, n_items=fm.n_items),
        ),
    }
    rows = []
    for point in simplex_grid(step):
        w = np.asarray(point)

        def blend(us: np.ndarray, w: np.ndarray = w) -> np.ndarray:
            return np.asarray(np.tensordot(w, z[:, us], axes=1))  # [b, n_items]

        row: dict[str, Any] = {"fold": fold, "standardise": standardise, "weights": list(point)}
        for split, (seen_ratings, test, seen) in splits.items():
            metrics = ranking_metrics(
                blend,
                train=seen_ratings,
                test=test,
                n_users=fm.n_users,
                n_items=fm.n_items,
                seen=seen,
            )
            row[split] = {m: float(metrics[m]) for m in METRICS}
        rows.append(row)
    return rows


def standardised(mats: list[np.ndarray], liked: np.ndarray, how: str) -> np.ndarray:
    """The components' score matrices on one scale: [3, n_users + 1, n_items] float64.

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


def render(command: str, totals: list[dict[str, Any]], folds: list[str]) -> str:
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from training.data import load_dataset  # noqa: PLC0415
    from training.train import TeacherConfig  # noqa: PLC0415

    tasks = [(args.data_dir, f, name, args.quick) for f in args.fold_list for name in COMPONENTS]
    trained = run_pool(component_scores, tasks, args.jobs)
    ds = load_dataset(args.data_dir)
    teacher = TeacherConfig().quick() if args.quick else TeacherConfig()
    scores = {(t["fold"], t["component"]): t["scores"] for t in trained}
    rows = []
    for fold in args.fold_list:
        mats = [scores[(fold, name)] for name in COMPONENTS]
        for how in args.standardise_list:
            rows += grid_rows(
                ds, args.data_dir, fold, teacher, mats, step=args.step, standardise=how
            )
    totals = summary(rows, args.fold_list, args.standardise_list)
    command = "python -m bench.blend " + shlex.join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command, "rows": rows, "summary": totals}
    write_outputs(args.out, payload, render(command, totals, args.fold_list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
