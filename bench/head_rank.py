"""Whether a two-head student should give each head its own embedding dimensions.

    python -m bench.head_rank --data-dir $MOVIELENS_DIR --folds u1,u2,u3 --seeds 2 \
        --teacher-cache DIR [--ranks 6,8,10,12,14,16,20,24] [--out DIR]

A student whose score and rating heads both read one d-dimensional embedding per side can
only produce score and rating matrices whose rows lie in one d-dimensional subspace per
side. This measures what that costs, on the teacher's own matrices: per rank d, each of
the teacher's row-centred score matrix S and its rating matrix R less its mean and
row/column offsets (the student's biases carry those) is projected onto

- `score only`: S's best rank-d user and item subspaces (its truncated SVD);
- `rating only`: R's best rank-d subspaces;
- `shared`: the best rank-d subspaces of [S, w R] (users) and [S^T, w R^T] (items), with
  w = |S| / |R| so that neither matrix dominates,

and scored under protocol P on each fold's held-back tenth (never the test fold): the
NDCG@10 of the projected S and the RMSE of the projected R, as ratios to the teacher's.
Teachers are those bench.student trains on the held-back splits (`--teacher-cache`, the
same keys; missing ones are trained). Writes --out (.md and .json).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._heldout import int_list, write_outputs
from bench.student import fold_split, get_teacher
from training.data import Dataset, Split, load_dataset
from training.evaluate import ranking_metrics, rating_metrics
from training.models.base import TwoHeadModel

log = logging.getLogger("bench.head_rank")

MODES = ("score only", "rating only", "shared")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k folder")
    parser.add_argument("--folds", default="u1,u2,u3")
    parser.add_argument("--seeds", type=int, default=2, help="teacher seeds 0..N-1 per fold")
    parser.add_argument("--teacher-cache", type=Path, default=None)
    parser.add_argument("--ranks", default="6,8,10,12,14,16,20,24")
    parser.add_argument("--quick", action="store_true", help="tiny teachers: for tests only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/head-rank"))
    args = parser.parse_args(argv)
    args.rank_list = int_list(parser, "--ranks", args.ranks, 1)
    args.fold_list = [f.strip() for f in args.folds.split(",") if f.strip()]
    if not args.fold_list or args.seeds < 1:
        parser.error("--folds needs at least one fold and --seeds at least 1")
    return args


def teacher_matrices(teacher: TwoHeadModel, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's score and rating matrices over users x items 1..n: [U, M] each."""
    fm, tables = ds.feature_map, ds.tables
    users = np.arange(1, fm.n_users + 1)
    items = torch.arange(1, fm.n_items + 1)
    scores = teacher.score_matrix(users, tables)[:, 1:]  # type: ignore[operator]
    rows = []
    for u in users:
        user = torch.full((fm.n_items,), int(u))
        feats = torch.as_tensor(tables.user_feats[np.full(fm.n_items, u)])
        out = teacher.heads(
            user,
            items,
            feats,
            torch.as_tensor(tables.item_feats[1:]),
            torch.as_tensor(tables.item_genres[1:]),
        )
        rows.append(out["rating"].double().numpy())
    return scores.double().numpy(), np.stack(rows)


def subspace(matrix: np.ndarray, rank: int | None = None) -> np.ndarray:
    """Orthonormal basis [N, rank] of the best rank-`rank` column space of `matrix`; every
    rank's at once (its left singular vectors, best first) when `rank` is None."""
    left, _, _ = np.linalg.svd(matrix, full_matrices=False)
    return left if rank is None else left[:, :rank]


def project(matrix: np.ndarray, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return users @ (users.T @ matrix @ items) @ items.T


def cell(teacher: TwoHeadModel, ds: Dataset, split: Split, ranks: list[int]) -> dict[str, Any]:
    """Teacher NDCG@10 and RMSE, and per rank and mode the projected matrices' ratios."""
    fm = ds.feature_map
    with torch.no_grad():
        scores, ratings = teacher_matrices(teacher, ds)
    scores = scores - scores.mean(axis=1, keepdims=True)
    mean = ratings.mean()
    offsets = mean + (ratings.mean(axis=1, keepdims=True) - mean)
    offsets = offsets + (ratings.mean(axis=0, keepdims=True) - mean)
    residual = ratings - offsets

    def ndcg(matrix: np.ndarray) -> float:
        full = np.vstack([np.zeros((1, fm.n_items)), matrix])  # row 0: the unknown user
        metrics = ranking_metrics(
            lambda u: full[u],
            train=split.train,
            test=split.test,
            n_users=fm.n_users,
            n_items=fm.n_items,
        )
        return float(metrics["ndcg@10"])

    def rmse(matrix: np.ndarray) -> float:
        test = split.test
        return rating_metrics(matrix[test.user - 1, test.item - 1], test.rating)["rmse"]

    base_ndcg, base_rmse = ndcg(scores), rmse(ratings)
    weight = np.linalg.norm(scores) / max(float(np.linalg.norm(residual)), 1e-12)
    # Each mode's singular vectors once; a rank's subspaces are their leading columns.
    bases = {
        "score only": (subspace(scores), subspace(scores.T)),
        "rating only": (subspace(residual), subspace(residual.T)),
        "shared": (
            subspace(np.hstack([scores, weight * residual])),
            subspace(np.hstack([scores.T, weight * residual.T])),
        ),
    }
    rows = []
    for rank in ranks:
        for mode, (all_users, all_items) in bases.items():
            users, items = all_users[:, :rank], all_items[:, :rank]
            rows.append(
                {
                    "rank": rank,
                    "mode": mode,
                    "ndcg_ratio": ndcg(project(scores, users, items)) / base_ndcg,
                    "rmse_ratio": rmse(offsets + project(residual, users, items)) / base_rmse,
                }
            )
    return {"teacher_ndcg": base_ndcg, "teacher_rmse": base_rmse, "rows": rows}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data_dir, dataset="ml-100k")
    args.wait_for_teachers = 0.0  # get_teacher takes bench.student's options
    cells = []
    for fold in args.fold_list:
        split = fold_split(dataset, fold, held_back=True)
        for seed in range(args.seeds):
            args.seed = seed
            teacher, _ = get_teacher(args, dataset, split.train, split.name)
            result = cell(teacher.eval(), dataset, split, args.rank_list)
            log.info("%s seed %d: teacher NDCG@10 %.4f", fold, seed, result["teacher_ndcg"])
            cells.append({"fold": fold, "seed": seed, **result})
    return {"ranks": args.rank_list, "cells": cells}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Score and rating heads: one embedding subspace or two",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/head_rank.py. Ratios to",
        "the teacher's on each fold's held-back tenth; mean (min-max) over folds and seeds.",
        "",
        "| rank | " + " | ".join(f"{m}: NDCG@10 | {m}: RMSE" for m in MODES) + " |",
        "|---:|" + "---:|---:|" * len(MODES),
    ]
    for rank in result["ranks"]:
        parts = []
        for mode in MODES:
            rows = [
                r
                for c in result["cells"]
                for r in c["rows"]
                if (r["rank"], r["mode"]) == (rank, mode)
            ]
            for key in ("ndcg_ratio", "rmse_ratio"):
                values = np.array([r[key] for r in rows])
                parts.append(f"{values.mean():.4f} ({values.min():.4f}-{values.max():.4f})")
        lines.append(f"| {rank} | " + " | ".join(parts) + " |")
    teachers = [
        f"{c['fold']} seed {c['seed']}: NDCG@10 {c['teacher_ndcg']:.4f}, "
        f"RMSE {c['teacher_rmse']:.4f}"
        for c in result["cells"]
    ]
    lines += ["", "Teachers (held-back tenth): " + "; ".join(teachers) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    result = measure(args)
    command = "python -m bench.head_rank " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_outputs(args.out, result, markdown(result, command))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
