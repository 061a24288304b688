"""Which layers the INT8 student quantises: embedding tables only, or onnxruntime's default
set (MatMul too), on a bundle's student (bench/results/int8.md).

    python -m bench.int8 --model-dir models/current --data-dir $MOVIELENS_DIR [--repeat 3]

From the bundle's fp32 pair graph (student.onnx) each quantisation is written as the
pipeline writes it (`training.export.quantize_int8`, then its rating graph), and per
variant: the bytes of both graphs; the rating graph's median time on 10 and 100 random
rows (one thread, 2,000 runs each, the graphs in turns: bench.rating_graph's
`time_graphs`; `--repeat` rounds); the pair graph on the whole catalogue
(`ort_latency_ms`); and how far its ratings are from the fp32 graph's over every rated
pair of the data set (mean and max |difference|).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.rating_graph import Config, time_graphs
from training.data import load_dataset
from training.export import (
    INT8_OPS,
    export_rating_graph,
    ort_latency_ms,
    ort_pair_predict,
    ort_session,
    quantize_int8,
)

log = logging.getLogger("bench.int8")

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, Sequence[str] | None] = {"tables only": INT8_OPS, "default set": None}
ROWS = (10, 100)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a bundle (models/current)")
    parser.add_argument("--data-dir", type=Path, required=True, help="the data it was trained on")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the timings")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8")
    args = parser.parse_args(argv)
    if not (args.model_dir / "student.onnx").is_file():
        parser.error(f"--model-dir: no student.onnx in {args.model_dir}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ds = load_dataset(args.data_dir, dataset=args.dataset)
    fm, tables = ds.feature_map, ds.tables
    source = args.model_dir / "student.onnx"
    graphs = {"fp32": (source, work / "fp32.rating.onnx")}
    export_rating_graph(source, graphs["fp32"][1], fm)
    for name, ops in VARIANTS.items():
        pair = work / f"{name.replace(' ', '_')}.onnx"
        quantize_int8(source, pair, ops=ops)
        graphs[name] = (pair, pair.with_suffix(".rating.onnx"))
        export_rating_graph(pair, graphs[name][1], fm)
    users, items = ds.ratings.user, ds.ratings.item
    reference, _ = ort_pair_predict(ort_session(source), tables, users, items)
    out: dict[str, Any] = {}
    for name, (pair, rating) in graphs.items():
        got, _ = ort_pair_predict(ort_session(pair), tables, users, items)
        diff = np.abs(got - reference)
        out[name] = {
            "pair_bytes": pair.stat().st_size,
            "rating_bytes": rating.stat().st_size,
            "rating_diff_mean": float(diff.mean()),
            "rating_diff_max": float(diff.max()),
            **{f"rating_graph_us_{n}": [] for n in ROWS},
            "catalogue_ms": [],
        }
    ratings = {name: rating for name, (_, rating) in graphs.items()}
    for round_ in range(args.repeat):
        for n in ROWS:
            config = Config(k=n, warm_rounds=2000, cold_rounds=0, seed=round_)
            for row in time_graphs(ratings, fm, config, reference="fp32"):
                out[row["graph"]][f"rating_graph_us_{n}"].append(row["warm_p50_us"])
        for name, (pair, _) in graphs.items():
            out[name]["catalogue_ms"].append(ort_latency_ms(pair, fm, tables, runs=100))
    return out


def table(results: dict[str, Any]) -> list[str]:
    def cell(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    lines = [
        "| graph | pair / rating graph bytes | rating graph, 10 rows us | 100 rows us "
        "| whole catalogue ms | mean / max abs rating diff from fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['pair_bytes']:,} / {row['rating_bytes']:,} "
            f"| {cell(row['rating_graph_us_10'], '.1f')} "
            f"| {cell(row['rating_graph_us_100'], '.1f')} "
            f"| {cell(row['catalogue_ms'], '.3f')} "
            f"| {row['rating_diff_mean']:.4f} / {row['rating_diff_max']:.4f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args, Path(tmp))
    command = "python -m bench.int8 " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# INT8 student: embedding tables only, or MatMul layers too",
        "",
        f"`{command}`; medians over {args.repeat} round(s), range in brackets.",
        "",
        *table(results),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    log.info("\n%s", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
