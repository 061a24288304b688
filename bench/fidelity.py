"""How much of the teacher's top 10 a student keeps, against what its size could keep.

    python -m bench.fidelity --data-dir $MOVIELENS_DIR --fold u1 \
        [--teacher-cache DIR] [--seed 0] [--ranks 8,16,24,32,48] \
        [--variant "w_topk_kd=1.0;topk_kd_items=10" ...]

Fidelity here is the share of the teacher's top 10 (among the items each user has not
rated in training, as protocol P ranks) that a model also puts in its top 10, averaged
over users; no test rating is read, so it can guide the student's design on any fold.
The ceiling: the best rank-d approximations of the teacher's score matrix (truncated
SVD, Eckart-Young), whose two factor tables cost (users + items) x d parameters. Beside
them, a student per `--variant` (StudentConfig fields separated by ";"; the empty
variant, the defaults, always comes first), distilled on the fold's training ratings at
`--ratio` as bench.student does, overall and by how many ratings its users have. Writes
--out (.md and .json; default bench/results/fidelity).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._heldout import write_outputs
from bench.student import config_overrides, get_teacher
from training.data import load_dataset, make_split
from training.distill import distill_student
from training.distill_config import StudentConfig
from training.evaluate import catalogue_scorer, top_k_stable
from training.seen import SeenIndex

log = logging.getLogger("bench.fidelity")

ACTIVITY_BINS = (0, 30, 60, 120, 250)
TOP = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k folder")
    parser.add_argument(
        "--fold", default="u1", help="canonical fold whose training ratings are used"
    )
    parser.add_argument("--teacher-cache", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the teacher's and student's seed")
    parser.add_argument("--ranks", default="8,16,24,32,48", help="SVD ranks of the ceiling")
    parser.add_argument("--ratio", type=float, default=0.91, help="the student's prune ratio")
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="F=V;F=V",
        help="StudentConfig fields of one more student (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget: for tests only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/fidelity"))
    args = parser.parse_args(argv)
    try:
        args.rank_list = [int(r) for r in args.ranks.split(",") if r.strip()]
        specs = ["", *args.variants]
        args.variant_list = [
            (spec, config_overrides([p for p in spec.split(";") if p.strip()])) for spec in specs
        ]
    except ValueError as err:
        parser.error(str(err))
    if not args.rank_list or min(args.rank_list) < 1:
        parser.error(f"--ranks: positive integers expected, got {args.ranks!r}")
    return args


def masked_top(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Each row's top k columns after hiding (rows, cols): [U, I] -> [U, k]."""
    hidden = np.array(scores, dtype=np.float64)
    hidden[rows, cols] = -np.inf
    return top_k_stable(hidden, k)


def overlap(top: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, the share of `reference`'s items that `top` also holds: [U, k] x2 -> [U]."""
    return np.array([np.isin(a, b).mean() for a, b in zip(top, reference, strict=True)])


def svd_ceiling(scores: np.ndarray, ranks: list[int]) -> dict[int, np.ndarray]:
    """The best rank-d approximation (in Frobenius norm) of `scores` for each d."""
    u, s, vt = np.linalg.svd(scores, full_matrices=False)
    return {d: (u[:, :d] * s[:d]) @ vt[:d] for d in ranks}


def by_activity(values: np.ndarray, counts: np.ndarray) -> list[dict[str, Any]]:
    """Mean of `values` per bin of users' training-rating counts."""
    top = int(counts.max())
    edges = [*(b for b in ACTIVITY_BINS if b <= top), top + 1]
    out = []
    for lo, hi in itertools.pairwise(edges):
        pick = (counts >= lo) & (counts < hi)
        if pick.any():
            out.append(
                {
                    "ratings": f"{lo}-{hi - 1}",
                    "users": int(pick.sum()),
                    "overlap": float(values[pick].mean()),
                }
            )
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data_dir, dataset="ml-100k")
    fm = dataset.feature_map
    train = make_split(dataset, split=args.fold).train
    args.wait_for_teachers = 0.0  # get_teacher takes bench.student's options: no waiting here
    teacher, _ = get_teacher(args, dataset, train, args.fold)
    users = np.arange(1, fm.n_users + 1)
    seen = SeenIndex.from_ratings(train, n_users=fm.n_users, n_items=fm.n_items)
    counts = np.diff(seen.indptr)[1 : fm.n_users + 1]
    rows = np.repeat(np.arange(users.size), counts)
    cols = seen.indices[seen.indptr[1] : seen.indptr[fm.n_users + 1]] - 1
    scores = catalogue_scorer(teacher, dataset.tables, n_items=fm.n_items)(users)
    reference = masked_top(scores, rows, cols, TOP)
    ceiling = [
        {
            "rank": d,
            "params": (fm.n_users + fm.n_items) * d,
            "overlap": float(overlap(masked_top(m, rows, cols, TOP), reference).mean()),
        }
        for d, m in svd_ceiling(scores.astype(np.float64), args.rank_list).items()
    ]
    base = StudentConfig(
        prune_ratio=args.ratio,
        seed=args.seed,
        quick=args.quick,
        threads=args.threads,
        progress=False,
    )
    students = []
    for spec, overrides in args.variant_list:
        student, info = distill_student(dataset, train, teacher, config=replace(base, **overrides))
        top = masked_top(
            catalogue_scorer(student, dataset.tables, n_items=fm.n_items)(users), rows, cols, TOP
        )
        mine = overlap(top, reference)
        log.info("student %r: overlap@%d %.4f", spec or "defaults", TOP, mine.mean())
        students.append(
            {
                "variant": spec or "defaults",
                "params": info["params"],
                "teacher_params": info["teacher_params"],
                "shape": info["shape"],
                "overlap": float(mine.mean()),
                "by_activity": by_activity(mine, counts),
            }
        )
    return {"fold": args.fold, "seed": args.seed, "ceiling": ceiling, "students": students}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        f"# How much of the teacher's top {TOP} a student keeps "
        f"({result['fold']}, seed {result['seed']})",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/fidelity.py: the share of",
        f"the teacher's top {TOP} (unrated items, as protocol P ranks) a model also ranks in",
        "its top 10, mean over users; no test rating is read.",
        "",
        "| model | parameters | overlap@10 |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| rank-{c['rank']} SVD of the teacher's scores | {c['params']:,} | {c['overlap']:.4f} |"
        for c in result["ceiling"]
    ]
    lines += [
        f"| student ({s['variant']}) | {s['params']:,} | {s['overlap']:.4f} |"
        for s in result["students"]
    ]
    bins = [b["ratings"] for b in result["students"][0]["by_activity"]]
    lines += [
        "",
        "By the user's number of training ratings (users per bin in brackets):",
        "",
        "| student | "
        + " | ".join(f"{b['ratings']} ({b['users']})" for b in result["students"][0]["by_activity"])
        + " |",
        "|---|" + "---:|" * len(bins),
    ]
    lines += [
        f"| {s['variant']} | " + " | ".join(f"{b['overlap']:.4f}" for b in s["by_activity"]) + " |"
        for s in result["students"]
    ]
    lines += ["", "Student shapes after pruning:", ""]
    lines += [f"- {s['variant']}: {s['shape']}" for s in result["students"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("training").setLevel(logging.WARNING)
    result = measure(args)
    command = "python -m bench.fidelity " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_outputs(args.out, {"command": command, **result}, markdown(result, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
