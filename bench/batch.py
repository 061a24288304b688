"""Larger batches with a scaled learning rate: time against quality, on validation data only.

    python -m bench.batch --data-dir $MOVIELENS_DIR [--folds u1,u2] [--scales 1,2,4] [--jobs 1]

Each teacher component trains the teacher's way (a 90/10 selection split, each head kept
at its best validation epoch, early stopping) at its default batch size times each
--scales factor, with every learning rate (`lr`, `tower_lr`) multiplied by the factor's
square root (`--lr-rule sqrt`, the usual rule for Adam) or by the factor itself
(`--lr-rule linear`, Goyal et al.'s rule for SGD). Both models of a pair are scored under
protocol P on a further tenth of the fold's training ratings held back first (seed 1, as
bench/refit.py): the test folds are never read. Reported per run: wall seconds, epochs run
and kept, seconds per epoch (training and the per-epoch validation) and the held-back
metrics. Writes bench/results/batch.md and .json.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench._heldout import (
    COMPONENTS,
    METRICS,
    component_parser,
    held_back_splits,
    parse_components,
    run_pool,
    write_outputs,
)

log = logging.getLogger("bench.batch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = component_parser(__doc__, folds="u1,u2", jobs=1, out="batch")
    parser.add_argument("--scales", default="1,2,4", help="batch size multipliers")
    parser.add_argument("--lr-rule", choices=("sqrt", "linear"), default="sqrt")
    args = parse_components(parser, argv)
    try:
        args.scale_list = [int(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--scales: whole numbers separated by commas, got {args.scales!r}")
    if not args.scale_list or min(args.scale_list) < 1:
        parser.error("--scales: at least one multiplier, each at least 1")
    return args


def lr_factor(scale: int, rule: str) -> float:
    """The learning-rate multiplier of a batch `scale` times the default."""
    return float(scale) if rule == "linear" else math.sqrt(scale)


def run_one(task: tuple[Path, str, str, int, str, bool]) -> dict[str, Any]:
    """One (fold, component, batch scale): trained on the selection split, scored on the
    held-back tenth."""
    import torch  # noqa: PLC0415

    from training.data import load_dataset  # noqa: PLC0415
    from training.evaluate import evaluate_model  # noqa: PLC0415
    from training.train import TeacherConfig, train_component  # noqa: PLC0415

    data_dir, fold, name, scale, rule, quick = task
    torch.set_num_threads(1)
    ds = load_dataset(data_dir)
    fm = ds.feature_map
    teacher = TeacherConfig().quick() if quick else TeacherConfig()
    default = getattr(teacher, name)
    factor = lr_factor(scale, rule)
    config = replace(
        default,
        batch_size=default.batch_size * scale,
        lr=default.lr * factor,
        tower_lr=(default.tower_lr or default.lr) * factor,
    )
    seed = teacher.seed + COMPONENTS.index(name)  # as train_teacher seeds each component
    train, check, fit, valid = held_back_splits(ds, data_dir, fold, teacher)
    started = time.perf_counter()
    model, info = train_component(
        name, fm, ds.tables, fit, config=config, valid=valid, seed=seed, progress=False
    )
    seconds = time.perf_counter() - started
    scores = evaluate_model(
        model, ds.tables, train=train, test=check, n_users=fm.n_users, n_items=fm.n_items
    )
    row = {
        "fold": fold,
        "component": name,
        "scale": scale,
        "batch_size": config.batch_size,
        "lr_factor": factor,
        "seconds": seconds,
        "epochs_run": len(info["curves"]),
        "head_epochs": [int(e) for e in info["head_epochs"]],
        **{m: float(scores[m]) for m in METRICS},
    }
    row["epoch_seconds"] = seconds / max(row["epochs_run"], 1)
    log.info("%s", row)
    return row


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per component and scale: each figure's mean over the folds, and its change against
    the default batch of the same fold (time as a ratio, metrics as differences)."""
    base = {(r["fold"], r["component"]): r for r in rows if r["scale"] == 1}
    out = []
    for name in dict.fromkeys(r["component"] for r in rows):
        for scale in sorted({r["scale"] for r in rows if r["component"] == name}):
            mine = [r for r in rows if r["component"] == name and r["scale"] == scale]
            entry: dict[str, Any] = {"component": name, "scale": scale, "folds": len(mine)}
            for key in ("seconds", "epoch_seconds", "epochs_run", *METRICS):
                entry[key] = statistics.fmean(float(r[key]) for r in mine)
            paired = [(r, base[(r["fold"], name)]) for r in mine if (r["fold"], name) in base]
            if paired and scale != 1:
                ratios = [r["seconds"] / b["seconds"] for r, b in paired]
                entry["time_ratio"] = statistics.fmean(ratios)
                for m in METRICS:
                    deltas = [r[m] - b[m] for r, b in paired]
                    better = sum(d < 0 if m == "rmse" else d > 0 for d in deltas)
                    entry[f"{m}_delta"] = statistics.fmean(deltas)
                    entry[f"{m}_better_on"] = better
            out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]], totals: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Larger batches with a scaled learning rate (validation data only)",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/batch.py for the set-up:",
        "each component trains the teacher's way on 90% of a fold's training ratings minus a",
        "held-back tenth (seed 1), and is scored under protocol P on that tenth. The test",
        "folds are never read. One thread per run.",
        "",
        "| fold | component | batch | lr x | epochs run (kept: rating, ranking) | s/epoch | "
        "seconds | rmse | ndcg@10 | recall@10 |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kept = ", ".join(str(e) for e in r["head_epochs"])
        lines.append(
            f"| {r['fold']} | {r['component']} | {r['batch_size']} | {r['lr_factor']:.2f} | "
            f"{r['epochs_run']} ({kept}) | {r['epoch_seconds']:.1f} | {r['seconds']:.0f} | "
            + " | ".join(f"{r[m]:.4f}" for m in METRICS)
            + " |"
        )
    lines += [
        "",
        "Against the default batch on the same fold, mean over the folds (in brackets: folds",
        "where the larger batch was better):",
        "",
        "| component | batch x | time ratio | rmse | ndcg@10 | recall@10 |",
        "|---|---:|---:|---|---|---|",
    ]
    for t in totals:
        if "time_ratio" not in t:
            continue
        cells = [f"{t[f'{m}_delta']:+.4f} ({t[f'{m}_better_on']}/{t['folds']})" for m in METRICS]
        head = f"| {t['component']} | {t['scale']} | {t['time_ratio']:.2f} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tasks = [
        (args.data_dir, f, name, scale, args.lr_rule, args.quick)
        for f in args.fold_list
        for name in args.component_order
        for scale in args.scale_list
    ]
    rows = run_pool(run_one, tasks, args.jobs)
    totals = summary(rows)
    command = (
        f"python -m bench.batch --data-dir $MOVIELENS_DIR --folds {args.folds} "
        f"--components {args.components} --scales {args.scales} --lr-rule {args.lr_rule} "
        f"--jobs {args.jobs}" + (" --quick" if args.quick else "")
    )
    payload = {"command": command, "rows": rows, "summary": totals}
    write_outputs(args.out, payload, markdown(rows, totals, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
