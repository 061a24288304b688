"""The teacher's rating graph with and without its export-time fusions (docs/BENCHMARKS.md,
"Rating graph").

    python -m bench.rating_graph --checkpoint models/.work/<run>/teacher.pt

The rating graph is what an uncached teacher /recommend runs on its k items and every
teacher /predict_rating runs. This exports the trained teacher's pair graph twice, with
AutoInt's heads as one ONNX Attention node (training/models/layers.py, FieldAttention) and
traced op by op, cuts each to its rating graph with and without the fused field lookups
(training/graph_fusion.py), and times the four graphs in turns on k rows, one thread:
warm (a tight loop), and cold, with a buffer larger than the last-level cache read
before every run (as `recommend_service_cold` in bench/_ortfloor.py: what a served miss
finds after the web stack ran). Writes bench/results/rating-graph.json and its section
of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bench._sections import RATING_GRAPH, replace_section
from contract.features import FeatureMap
from contract.session import graph_inputs, open_session, run_rating
from contract.signature import RATING_OUTPUTS
from training import checkpoint
from training.export import export_onnx, export_rating_graph, ort_feed, random_batch
from training.models.base import TwoHeadModel
from training.models.layers import InteractingLayer

log = logging.getLogger("bench.rating_graph")

_REPO = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = RATING_GRAPH
# (name, AutoInt heads as one Attention node, field lookups fused); the last is what ships.
VARIANTS = (
    ("traced", False, False),
    ("attention", True, False),
    ("lookups", False, True),
    ("both", True, True),
)
_FEEDS = 64
_EVICT_MB = 64


@dataclass(frozen=True)
class Config:
    k: int
    warm_rounds: int
    cold_rounds: int
    seed: int


def build_variants(model: TwoHeadModel, fm: FeatureMap, work: Path) -> dict[str, Path]:
    """The four rating graphs of `model`, written under `work`."""
    layers = [m for m in model.modules() if isinstance(m, InteractingLayer)]
    graphs = {}
    try:
        for name, attention, lookups in VARIANTS:
            for layer in layers:
                layer.fused_export = attention
            pair = export_onnx(model, fm, work / f"{name}.onnx", metadata={"model": "teacher"})
            target = work / f"{name}.rating.onnx"
            export_rating_graph(pair, target, fm, fuse_lookups=lookups)
            graphs[name] = target
    finally:
        for layer in layers:
            layer.fused_export = True
    return graphs


def time_graphs(
    graphs: dict[str, Path], fm: FeatureMap, config: Config, *, reference: str = "traced"
) -> list[dict[str, Any]]:
    """Median and p95 microseconds per graph, warm and (with cold rounds) cold, the graphs
    run in turns; and each graph's largest rating difference from the `reference` one."""
    sessions = {}
    for name, path in graphs.items():
        session = open_session(path, intra_op_threads=1, inter_op_threads=1, needs=RATING_OUTPUTS)
        sessions[name] = (session, graph_inputs(session, file=path.name, needs=RATING_OUTPUTS))
    rng = np.random.default_rng(config.seed)
    feeds = [ort_feed(random_batch(fm, config.k, rng=rng)) for _ in range(_FEEDS)]
    ratings = {n: run_rating(s, feeds[0], inputs=i) for n, (s, i) in sessions.items()}
    flush = np.ones(_EVICT_MB * 2**20 // 8)
    modes = [m for m in (("warm", config.warm_rounds), ("cold", config.cold_rounds)) if m[1] > 0]
    times: dict[tuple[str, str], list[int]] = {}
    for mode, rounds in modes:
        for r in range(rounds):
            for name, (session, inputs) in sessions.items():
                if mode == "cold":
                    flush.sum()
                started = time.perf_counter_ns()
                run_rating(session, feeds[r % _FEEDS], inputs=inputs)
                times.setdefault((name, mode), []).append(time.perf_counter_ns() - started)
    rows = []
    for name, path in graphs.items():
        diff = float(np.abs(ratings[name] - ratings[reference]).max())
        row: dict[str, Any] = {
            "graph": name,
            "nodes": len(onnx.load(str(path)).graph.node),
            f"max_abs_diff_vs_{reference}": diff,
        }
        for mode, _ in modes:
            us = np.asarray(times[(name, mode)], dtype=np.float64) / 1e3
            row[f"{mode}_p50_us"] = float(np.percentile(us, 50))
            row[f"{mode}_p95_us"] = float(np.percentile(us, 95))
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], *, command: str, k: int) -> str:
    base = rows[0]
    lines = [
        MARK_BEGIN,
        "## Rating graph: export-time fusions",
        "",
        f"Generated by `{command}`. The teacher's rating graph on {k} rows (an uncached",
        "/recommend's k items), one onnxruntime thread; `traced` is the graph as traced op by",
        "op, `attention` has AutoInt's heads as one ONNX Attention node (opset 23), `lookups`",
        "has the field lookups with equal inputs fused (training/graph_fusion.py), `both` is",
        "what the pipeline ships. Cold: a buffer larger than the last-level cache read before",
        "every run. Microseconds; the ratio is the p50 over `traced`'s.",
        "",
        "| graph | nodes | warm p50 | warm p95 | cold p50 | cold p95 | warm ratio | cold ratio"
        " | max diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['graph']} | {row['nodes']} | {row['warm_p50_us']:.1f} | "
            f"{row['warm_p95_us']:.1f} | {row['cold_p50_us']:.1f} | {row['cold_p95_us']:.1f} | "
            f"{row['warm_p50_us'] / base['warm_p50_us']:.3f} | "
            f"{row['cold_p50_us'] / base['cold_p50_us']:.3f} | "
            f"{row['max_abs_diff_vs_traced']:.2g} |"
        )
    return "\n".join([*lines, MARK_END])


def write_docs(section: str, docs: Path) -> None:
    """Replaces the section between the markers, or appends it."""
    text = docs.read_text(encoding="utf-8") if docs.exists() else ""
    docs.write_text(
        replace_section(text, section, begin=MARK_BEGIN, end=MARK_END), encoding="utf-8"
    )


def _latest_checkpoint() -> Path | None:
    found = sorted(
        (_REPO / "models" / ".work").glob("*/teacher.pt"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rating_graph", description=__doc__)
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="a teacher checkpoint (default: the newest models/.work/*/teacher.pt)",
    )  # fmt: skip
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warm-rounds", type=int, default=3000)
    parser.add_argument("--cold-rounds", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--results", type=Path, default=_REPO / "bench" / "results" / "rating-graph.json"
    )
    parser.add_argument("--docs", type=Path, default=_REPO / "docs" / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = args.checkpoint or _latest_checkpoint()
    if path is None or not path.is_file():
        parser.error("no teacher checkpoint: run `make bundle` first, or pass --checkpoint")
    config = Config(args.k, args.warm_rounds, args.cold_rounds, args.seed)
    fm = FeatureMap.from_json(checkpoint.read_checkpoint(path)["config"]["feature_map"])
    model = checkpoint.load_model(path, fm=fm, kind="ensemble")
    with tempfile.TemporaryDirectory(prefix="rating-graph-") as work:
        rows = time_graphs(build_variants(model, fm, Path(work)), fm, config)
    command = shlex.join(["python", "-m", "bench.rating_graph", *sys.argv[1:]])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    shown = path.resolve()
    where = shown.relative_to(_REPO) if shown.is_relative_to(_REPO) else shown
    payload = {"command": command, "checkpoint": str(where), "k": args.k, "rows": rows}
    args.results.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    write_docs(render(rows, command=command, k=args.k), args.docs)
    for row in rows:
        log.info("%s", json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
