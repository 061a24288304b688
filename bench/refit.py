"""Whether each teacher component's refit on all training data pays, on validation data only.

    python -m bench.refit --data-dir $MOVIELENS_DIR [--folds u1,u2,u3,u4,u5] [--jobs 2]

The teacher trains each component on 90% of its training ratings, selects each head's
epoch on the other 10%, and (`TeacherConfig.refit_full`) trains it again on all of them
for the selected epochs: twice the component's time. Whether the refit pays cannot be
read off the test fold (that would tune on it), nor off the teacher's own validation
split (the refit trains on it). So for each fold a further tenth of the fold's training
ratings is held back first (`holdout` with seed 1; the test fold is never read): the
teacher's procedure runs on the rest (its 90/10 split with seed 0, then the refit), and
both models of each component are scored under protocol P on the held-back tenth. The
refit here retrains both heads whatever `ComponentConfig.refit_heads` says, so that each
head's gain shows: RMSE is the rating head's, NDCG@10 and Recall@10 the ranking towers'.
Writes bench/results/refit.md and .json.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("mf", "xdeepfm", "autoint")
METRICS = ("rmse", "ndcg@10", "recall@10")
CHECK_SEED = 1  # the teacher's own validation split uses seed 0

log = logging.getLogger("bench.refit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="ml-100k folder")
    parser.add_argument("--folds", default="u1,u2,u3,u4,u5", help="comma-separated folds")
    parser.add_argument("--components", default=",".join(COMPONENTS))
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="the --quick teacher (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "refit")
    return parser.parse_args(argv)


def run_one(task: tuple[Path, str, str, bool]) -> dict[str, Any]:
    """One (fold, component): its first run and its refit, both scored on the check tenth."""
    import torch  # noqa: PLC0415

    from training.data import holdout, load_dataset, make_split  # noqa: PLC0415
    from training.evaluate import evaluate_model  # noqa: PLC0415
    from training.train import TeacherConfig, train_component  # noqa: PLC0415

    data_dir, fold, name, quick = task
    torch.set_num_threads(1)
    ds = load_dataset(data_dir)
    fm = ds.feature_map
    teacher = TeacherConfig().quick() if quick else TeacherConfig()
    config = getattr(teacher, name)
    seed = teacher.seed + COMPONENTS.index(name)  # as train_teacher seeds each component
    train, check = holdout(make_split(ds, split=fold, data_dir=data_dir).train, seed=CHECK_SEED)
    fit, valid = holdout(train, fraction=teacher.valid_fraction, seed=teacher.seed)
    row: dict[str, Any] = {"fold": fold, "component": name}
    for label, data, held in (("first", fit, valid), ("refit", train, None)):
        started = time.perf_counter()
        model, info = train_component(
            name,
            fm,
            ds.tables,
            data,
            config=config,
            valid=held,
            head_epochs=row.get("head_epochs"),
            seed=seed,
            progress=False,
        )
        row[f"{label}_seconds"] = time.perf_counter() - started
        row.setdefault("head_epochs", tuple(int(e) for e in info["head_epochs"]))
        scores = evaluate_model(
            model, ds.tables, train=train, test=check, n_users=fm.n_users, n_items=fm.n_items
        )
        row[label] = {m: float(scores[m]) for m in METRICS}
    log.info("%s", row)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per component: the refit's mean change of each metric over the folds, and on how
    many folds it was better (lower RMSE, higher NDCG and Recall)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["component"] for r in rows):
        mine = [r for r in rows if r["component"] == name]
        entry: dict[str, Any] = {"folds": len(mine)}
        for m in METRICS:
            deltas = [r["refit"][m] - r["first"][m] for r in mine]
            better = sum(d < 0 if m == "rmse" else d > 0 for d in deltas)
            entry[m] = {"mean_delta": statistics.fmean(deltas), "better_on": better}
        entry["refit_seconds"] = statistics.fmean(r["refit_seconds"] for r in mine)
        out[name] = entry
    return out


def markdown(rows: list[dict[str, Any]], totals: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        "# Does the teacher's refit on all training data pay? (validation data only)",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/refit.py for the set-up:",
        "each fold's training ratings minus a held-back tenth (seed 1) train each component",
        "the teacher's way (90/10 selection split, then the refit on all of them); both",
        "models are scored under protocol P on the held-back tenth. The test folds are never",
        "read.",
        "",
        "| fold | component | epochs (rating, ranking) | rmse first → refit | "
        "ndcg@10 first → refit | recall@10 first → refit | seconds first / refit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r['first'][m]:.4f} → {r['refit'][m]:.4f}" for m in METRICS]
        lines.append(
            f"| {r['fold']} | {r['component']} | {r['head_epochs'][0]}, {r['head_epochs'][1]} | "
            + " | ".join(cells)
            + f" | {r['first_seconds']:.0f} / {r['refit_seconds']:.0f} |"
        )
    lines += [
        "",
        "Refit minus first run, mean over the folds (folds where the refit was better):",
        "",
        "| component | rmse | ndcg@10 | recall@10 | refit seconds |",
        "|---|---|---|---|---|",
    ]
    for name, t in totals.items():
        cells = [f"{t[m]['mean_delta']:+.4f} ({t[m]['better_on']}/{t['folds']})" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {t['refit_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    names = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = sorted(set(names) - set(COMPONENTS))
    if unknown:
        raise SystemExit(f"bench.refit: unknown components {unknown}; known: {COMPONENTS}")
    # The slowest component first, so that the pool's last task is a short one.
    order = sorted(names, key=("xdeepfm", "autoint", "mf").index)
    tasks = [(args.data_dir, f, name, args.quick) for f in folds for name in order]
    with multiprocessing.get_context("spawn").Pool(max(1, args.jobs)) as pool:
        rows = pool.map(run_one, tasks, chunksize=1)
    totals = summary(rows)
    command = f"python -m bench.refit --data-dir $MOVIELENS_DIR --folds {args.folds}"
    command += f" --components {args.components} --jobs {args.jobs}"
    command += " --quick" if args.quick else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "rows": rows, "summary": totals}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(rows, totals, command), encoding="utf-8")
    log.info("wrote %s", args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
