"""One setting of a teacher component, several values: time against quality, on
validation data only.

    python -m bench.variants --data-dir $MOVIELENS_DIR --components autoint \
        --set tower_lr=0.005,0.01 [--set FIELD=...] [--folds u1,u2,u3] [--seeds 1] \
        [--jobs 2] [--out PATH]

Each chosen component trains the teacher's way (a 90/10 selection split, each head kept
at its best validation epoch, early stopping) once per value of the `--set` field of its
config (`training/models/configs.py`); several `--set`s change their fields together (the
i-th run takes the i-th value of each, so each lists as many). The first values are the
baseline every other run is paired with on the same fold and seed (`--seeds` N: the
teacher's seeds 0..N-1, each drawing its own selection split and initialisation). Models
are scored under protocol P on a further tenth of the fold's training ratings held back
first (seed 1, as bench/refit.py): the test folds are never read. bench.negatives and
bench.batch are this benchmark for the settings they name, with what those settings need
besides.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from bench._heldout import (
    component_parser,
    delta_table,
    paired_summary,
    parse_components,
    run_cells,
    run_pool,
    train_variant,
    write_outputs,
)

log = logging.getLogger("bench.variants")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = component_parser(__doc__, folds="u1,u2,u3", jobs=2, out="variants")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        required=True,
        metavar="FIELD=V1,V2,...",
        help="a config field and its values, the first the baseline; repeat to change "
        "several fields together, value by value",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per fold and value")
    args = parse_components(parser, argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    settings = [parse_setting(parser, text, args.component_order) for text in args.settings]
    args.fields = [name for name, _ in settings]
    if len(set(args.fields)) != len(args.fields):
        parser.error(f"--set: a field is set twice in {args.fields}")
    if len({len(values) for _, values in settings}) != 1:
        parser.error("--set: every field needs as many values as the others")
    args.variants = list(zip(*(values for _, values in settings), strict=True))
    if len(set(args.variants)) != len(args.variants):
        parser.error(f"--set: at least two distinct values of {', '.join(args.fields)}")
    args.field = ", ".join(args.fields)
    return args


def variant_label(values: tuple[Any, ...]) -> Any:
    """A run's value in rows and tables: the value itself for one field, else the values
    joined (a string)."""
    return values[0] if len(values) == 1 else ", ".join(str(v) for v in values)


def parse_setting(
    parser: argparse.ArgumentParser, text: str, components: list[str]
) -> tuple[str, list[Any]]:
    """`FIELD=V1,V2,...` checked against every chosen component's config: the field must
    exist in each, and the values parse as its default's type (at least two); anything
    else is a one-line usage error."""
    from training.train import TeacherConfig  # noqa: PLC0415

    name, sep, raw = text.partition("=")
    if not sep or not name.strip() or not raw.strip():
        parser.error(f"--set: FIELD=V1,V2,... expected, got {text!r}")
    name = name.strip()
    defaults = []
    for component in components:
        config = getattr(TeacherConfig(), component)
        known = {f.name for f in dataclasses.fields(config)}
        if name not in known:
            parser.error(f"--set: {component} has no setting {name!r}; known: {sorted(known)}")
        defaults.append(getattr(config, name))
    kind = type(defaults[0])
    if kind not in (int, float, bool) or any(type(d) is not kind for d in defaults):
        parser.error(f"--set: {name!r} is not a number or a boolean in every chosen component")
    values = [_parse_value(parser, name, v.strip(), kind) for v in raw.split(",") if v.strip()]
    if len(values) < 2:
        parser.error(f"--set: at least two distinct values of {name!r}, got {raw!r}")
    return name, values


def _parse_value(parser: argparse.ArgumentParser, name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() not in ("true", "false"):
            parser.error(f"--set: {name!r} takes true or false, got {text!r}")
        return text.lower() == "true"
    try:
        return kind(text)
    except ValueError:
        parser.error(f"--set: {name!r} takes {kind.__name__} values, got {text!r}")


def run_one(
    task: tuple[Path, str, int, str, list[str], tuple[Any, ...], bool],
) -> dict[str, Any]:
    """One (fold, seed, component, values): trained on the selection split, scored on the
    held-back tenth."""
    data_dir, fold, seed, name, fields, values, quick = task
    overrides = dict(zip(fields, values, strict=True))
    row = train_variant(data_dir, fold, name, quick, overrides, seed=seed)
    return {**row, "value": variant_label(values)}


def markdown(
    rows: list[dict[str, Any]], totals: list[dict[str, Any]], field: str, command: str
) -> str:
    lines = [
        f"# `{field}` of the teacher's components (validation data only)",
        "",
        f"Generated by `{command}`; do not edit by hand. See bench/variants.py for the",
        "set-up: each component trains the teacher's way on 90% of a fold's training ratings",
        "minus a held-back tenth (seed 1), and is scored under protocol P on that tenth. The",
        "test folds are never read. One thread per run.",
        "",
        f"| fold | seed | component | {field} | epochs run (kept: rating, ranking) | s/epoch | "
        "seconds | rmse | ndcg@10 | recall@10 |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['fold']} | {r['seed']} | {r['component']} | {r['value']} | " + run_cells(r)
        for r in rows
    ]
    lines += [
        "",
        "Against the first value on the same fold and seed, mean over those pairs (in",
        "brackets: pairs where the variant was better, of all pairs):",
        "",
        *delta_table(totals, "value", field),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tasks = [
        (args.data_dir, f, seed, name, args.fields, values, args.quick)
        for f in args.fold_list
        for seed in range(args.seeds)
        for name in args.component_order
        for values in args.variants
    ]
    rows = run_pool(run_one, tasks, args.jobs)
    totals = paired_summary(rows, "value", variant_label(args.variants[0]))
    command = "python -m bench.variants " + shlex.join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command, "field": args.field, "rows": rows, "summary": totals}
    write_outputs(args.out, payload, markdown(rows, totals, args.field, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
