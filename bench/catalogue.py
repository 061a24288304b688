"""Catalogue-size benchmark of two-stage /recommend (docs/BENCHMARKS.md, "Catalogue size").

For each catalogue size: synthetic data in the ml-latest format (training.synth), a bundle
built by the pipeline in --quick mode, then one uvicorn worker with ORT_INTRA_OP_THREADS=1
serving it uncached. Measured per size and variant: uncached /recommend p50/p95/p99 over
HTTP, the bare first stage (user tower + search) in process, start-up time and RSS of the
server, bundle bytes, retrieval memory (item matrix + index), and the ANN's recall@10
against exact search on the same user vectors.

    python -m bench.catalogue --sizes 10000,100000,1000000 --work /tmp/catalogue

`--first-stage BUNDLE BUNDLE...` times only the first stage of given bundles, in turns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from app.bundle import Bundle, load_bundle
from app.inference import TowerRunner
from app.retrieval import RetrievalSettings, limit_search_threads, open_retriever
from bench._loadgen import LoadSpec, build_get, run_load
from bench._sections import CATALOGUE, replace_section
from bench._server import HOST, uvicorn_server
from contract.manifest import RetrievalEntry
from training.synth import SynthConfig, generate

log = logging.getLogger("bench.catalogue")

_REPO = Path(__file__).resolve().parents[1]
_RESULTS = _REPO / "bench" / "results" / "catalogue.json"
_MARK_BEGIN, _MARK_END = CATALOGUE
VARIANTS = ("teacher", "student")
_REQUESTS = 300  # per variant and size
_SETTLED_LOAD = 0.5
# Issue 16's targets: at the largest size, uncached p50 within these limits (ms) and within
# _GROWTH times the same variant's p50 at the smallest size; ANN recall@10 against exact
# at least _RECALL; the student's retrieval memory at most _MEMORY_SHARE of the teacher's.
_P50_LIMIT_MS = {"teacher": 10.0, "student": 5.0}
_GROWTH = 2.0
_RECALL = 0.98
_MEMORY_SHARE = 1 / 3


@dataclass(frozen=True)
class Size:
    items: int
    users: int
    ratings: int


def size_for(items: int) -> Size:
    """Users and ratings grow with the catalogue, far below real logs (a --quick bundle)."""
    users = min(20_000, max(2_000, items // 10))
    return Size(items=items, users=users, ratings=max(100_000, 2 * items))


def build_bundle(size: Size, work: Path, *, seed: int) -> tuple[Path, dict[str, float]]:
    """Synthetic data and a bundle with the real model shapes (bench/_shapes.py)."""
    from bench._shapes import ShapeConfig  # noqa: PLC0415 - torch only when building
    from training.pipeline import run_pipeline  # noqa: PLC0415

    data = work / f"data-{size.items}"
    models = work / f"models-{size.items}"
    times: dict[str, float] = {}
    if not (data / "ratings.csv").exists():
        started = time.perf_counter()
        generate(
            SynthConfig(n_users=size.users, n_items=size.items, n_ratings=size.ratings, seed=seed),
            data,
        )
        times["synth_s"] = time.perf_counter() - started
    if not (models / "current" / "manifest.json").exists():
        started = time.perf_counter()
        run_pipeline(
            ShapeConfig(
                data_dir=data, dataset="ml-latest", split="random", out_dir=models,
                quick=True, seed=seed, progress=False, latency_runs=5,
            )
        )  # fmt: skip
        times["pipeline_s"] = time.perf_counter() - started
    # Build times survive a --build-only run, so the measuring run can still report them.
    record = work / f"build-{size.items}.json"
    if times:
        record.write_text(json.dumps({**_read_times(record), **times}), encoding="utf-8")
    return (models / "current").resolve(), _read_times(record)


def _read_times(record: Path) -> dict[str, float]:
    return json.loads(record.read_text(encoding="utf-8")) if record.exists() else {}


def _entry(bundle: Bundle, variant: str) -> RetrievalEntry:
    entry = getattr(bundle.manifest.models, variant).retrieval
    assert entry is not None  # schema 2 requires it for served variants
    return entry


def first_stage(bundle: Bundle, *, users: np.ndarray, k: int) -> dict[str, Any]:
    """Bare tower + search times and ANN recall@10 against exact, in this process."""
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        entry = _entry(bundle, variant)
        tower = TowerRunner(
            bundle.directory / entry.user_tower.file,
            name=variant,
            providers=["CPUExecutionProvider"],
            intra_op_threads=1,
        )
        exact = open_retriever(
            bundle.directory, entry, n_items=bundle.n_items,
            settings=RetrievalSettings(mode="exact"),
        )  # fmt: skip
        auto = open_retriever(
            bundle.directory, entry, n_items=bundle.n_items, settings=RetrievalSettings()
        )
        vectors = tower.vectors(users, bundle.user_feats[users])
        times, overlap = [], []
        for vector in vectors:
            started = time.perf_counter()
            tower.vectors(users[:1], bundle.user_feats[users[:1]])
            got = auto.retrieve(vector, k)
            times.append(time.perf_counter() - started)
            want = exact.retrieve(vector, k)
            overlap.append(len(set(got.positions.tolist()) & set(want.positions.tolist())) / k)
        # What the served (auto) retriever holds: the item matrix for exact search, the
        # IVF-Flat index alone (it stores the vectors) when it searches approximately.
        index_bytes = (
            (bundle.directory / entry.ann.file).stat().st_size
            if entry.ann is not None and auto.use_ann
            else 0
        )
        out[variant] = {
            "method": "ann" if auto.use_ann else "exact",
            "dim": entry.items.dim,
            "first_stage_p50_ms": 1000 * statistics.median(times),
            "recall_at_10_vs_exact": float(np.mean(overlap)),
            "nprobe": entry.ann.nprobe if entry.ann is not None else None,
            "retrieval_bytes": int(auto.nbytes + index_bytes),
        }
    return out


def compare_first_stage(bundles: Sequence[Path], *, rounds: int, k: int, seed: int) -> None:
    """`first_stage` of each bundle on the same users, the bundles in turns, so that two
    builds of one catalogue meet the same machine; a JSON line per bundle and round."""
    limit_search_threads(1)
    loaded = [load_bundle(path) for path in bundles]
    for round_ in range(1, rounds + 1):
        for path, bundle in zip(bundles, loaded, strict=True):
            rng = np.random.default_rng(seed)
            users = rng.integers(1, bundle.n_users + 1, size=min(500, bundle.n_users))
            stage = first_stage(bundle, users=users.astype(np.int64), k=k)
            line = {"round": round_, "bundle": str(path), **stage}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def _rss_mb(pid: int) -> float:
    """Resident memory of the server's process tree (uvicorn with one worker: the worker)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Pid", "0")) == pid or int(fields.get("PPid", "0")) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


def serve_and_load(bundle: Bundle, *, requests: int, k: int, seed: int) -> dict[str, Any]:
    env = {
        "MODEL_DIR": str(bundle.directory),
        "REDIS_URL": "",
        "CACHE_MAX_ENTRIES": "1",
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
    }
    rng = np.random.default_rng(seed)
    users = [bundle.user_ids[i] for i in rng.permutation(bundle.n_users)[:requests].tolist()]
    out: dict[str, Any] = {}
    started = time.perf_counter()
    # The server on the first CPU, the load generator on the others: one core serves.
    cpus = frozenset(sorted(os.sched_getaffinity(0))[:1])
    with uvicorn_server(env, cpus=cpus, ready_timeout_s=1800) as server:
        out["startup_s"] = time.perf_counter() - started
        out["rss_mb"] = _rss_mb(server.process.pid)
        for variant in VARIANTS:
            reqs = [
                build_get(f"/recommend?user_id={quote(u, safe='')}&k={k}", host=HOST,
                          headers={"X-Variant": variant})
                for u in users
            ]  # fmt: skip
            result = run_load(LoadSpec(
                host=HOST, port=server.port, requests=reqs, concurrency=1,
                max_requests=requests, max_seconds=120.0, warmup_requests=min(20, requests),
            ))  # fmt: skip
            out[variant] = {key: result[key] for key in ("p50_ms", "p95_ms", "p99_ms", "failed")}
    return out


def settle(*, below: float = _SETTLED_LOAD, max_wait_s: float = 180.0) -> float:
    """Waits (bounded) for the 1-minute load average to fall, so that a bundle just built
    (its training threads count for a minute afterwards) does not slow the measurement."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] > below and time.monotonic() < deadline:
        time.sleep(5.0)
    return os.getloadavg()[0]


def measure(size: Size, work: Path, *, requests: int, k: int, seed: int) -> dict[str, Any]:
    directory, build_times = build_bundle(size, work, seed=seed)
    load_before = settle()
    bundle = load_bundle(directory)
    rng = np.random.default_rng(seed)
    users = rng.integers(1, bundle.n_users + 1, size=min(500, bundle.n_users)).astype(np.int64)
    limit_search_threads(1)  # one core, as the served worker (RETRIEVAL_THREADS=1)
    stage = first_stage(bundle, users=users, k=k)
    served = serve_and_load(bundle, requests=requests, k=k, seed=seed)
    files = [p for p in directory.iterdir() if p.is_file()]
    return {
        "items": size.items,
        "users": size.users,
        "ratings": size.ratings,
        "bundle_bytes": sum(p.stat().st_size for p in files),
        **build_times,
        "startup_s": served["startup_s"],
        "requests": requests,
        # Other work on the machine while this size was measured (1-minute load average).
        "load_average_before": load_before,
        "load_average": os.getloadavg()[0],
        "rss_mb": served["rss_mb"],
        "variants": {v: {**stage[v], **served[v]} for v in VARIANTS},
    }


_INTRO = """## Catalogue size (two-stage /recommend from 10^4 items up)

Generated by `bench/catalogue.py`; do not edit by hand. Command:
`{command}`. Per size: synthetic ml-latest data (`training.synth`), a bundle with the real
model shapes but one training epoch per teacher component (`bench/_shapes.py`: memory
and latency depend on shapes, not weights), one uvicorn worker pinned to one core with
`ORT_INTRA_OP_THREADS=1` and `RETRIEVAL_THREADS=1`, no cache, {requests} users per variant
at concurrency 1, measured once the machine's load average fell below 0.5 (or after 3 min).
`first stage` is the user tower plus the search in process; `ANN recall@10`
is against exact search on the same 500 user vectors (1.000 where the search is exact);
`retrieval MB` is what the served first stage holds: the item matrix for an exact search,
the IVF-Flat index alone (it stores the vectors and answers the exact fallback) for ANN.
The load average column says how busy the shared machine was: latencies measured above
about 2 are pessimistic.
"""


def render(rows: list[dict[str, Any]], *, command: str) -> str:
    requests = rows[0].get("requests", _REQUESTS) if rows else _REQUESTS
    lines = [
        _MARK_BEGIN,
        _INTRO.format(command=command, requests=requests),
        "| items | variant | search | dim | HTTP p50 / p95 / p99 ms | first stage p50 ms "
        "| ANN recall@10 | retrieval MB | start-up s | RSS MB | bundle MB "
        "| load avg before → after |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for variant in VARIANTS:
            v = row["variants"][variant]
            lines.append(
                f"| {row['items']:,} | {variant} | {v['method']} | {v['dim']} "
                f"| {v['p50_ms']:.2f} / {v['p95_ms']:.2f} / {v['p99_ms']:.2f} "
                f"| {v['first_stage_p50_ms']:.3f} | {v['recall_at_10_vs_exact']:.3f} "
                f"| {v['retrieval_bytes'] / 2**20:.1f} | {row['startup_s']:.1f} "
                f"| {row['rss_mb']:.0f} | {row['bundle_bytes'] / 2**20:.1f} "
                f"| {_load(row)} |"
            )
    lines += ["", *targets(rows), "", "![catalogue-latency.png](img/catalogue-latency.png)"]
    return "\n".join([*lines, _MARK_END])


def _load(row: dict[str, Any]) -> str:
    after = f"{row.get('load_average', float('nan')):.1f}"
    before = row.get("load_average_before")
    return after if before is None else f"{before:.1f} → {after}"


def _mark(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 16's catalogue targets, checked on this run's rows."""
    if not rows:
        return []
    small, large = rows[0], rows[-1]
    out = ["Targets (this run):", ""]
    for variant in VARIANTS:
        p50 = large["variants"][variant]["p50_ms"]
        base = small["variants"][variant]["p50_ms"]
        limit = _P50_LIMIT_MS[variant]
        out.append(
            f"- {variant} p50 at {large['items']:,} items {p50:.2f} ms <= {limit:g} ms: "
            f"{_mark(p50 <= limit)}; {p50 / base:.2f}x its p50 at {small['items']:,} items "
            f"<= {_GROWTH:g}x: {_mark(p50 <= _GROWTH * base)}"
        )
    ann = [(r["items"], v, r["variants"][v]) for r in rows for v in VARIANTS]
    recalls = [(n, v, s["recall_at_10_vs_exact"]) for n, v, s in ann if s["method"] == "ann"]
    if recalls:
        worst = min(recalls, key=lambda t: t[2])
        out.append(
            f"- ANN recall@10 against exact, lowest {worst[2]:.3f} ({worst[1]}, {worst[0]:,} "
            f"items) >= {_RECALL}: {_mark(worst[2] >= _RECALL)}"
        )
    shares = [
        r["variants"]["student"]["retrieval_bytes"] / r["variants"]["teacher"]["retrieval_bytes"]
        for r in rows
    ]
    out.append(
        f"- student retrieval memory / teacher's, highest {max(shares):.2f} <= 1/3 at every "
        f"size: {_mark(max(shares) <= _MEMORY_SHARE)}"
    )
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 3.5))
    items = [row["items"] for row in rows]
    for variant in VARIANTS:
        ax.plot(items, [row["variants"][variant]["p50_ms"] for row in rows], "o-", label=variant)
    ax.set_xscale("log")
    ax.set_xlabel("catalogue size (items)")
    ax.set_ylabel("uncached /recommend p50 (ms)")
    ax.set_title("Two-stage /recommend, one core, ORT_INTRA_OP_THREADS=1")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(rows: list[dict[str, Any]], docs: Path, *, command: str) -> None:
    text = docs.read_text(encoding="utf-8") if docs.exists() else ""
    table = render(rows, command=command)
    docs.write_text(
        replace_section(text, table, begin=_MARK_BEGIN, end=_MARK_END), encoding="utf-8"
    )
    (docs.parent / "img").mkdir(exist_ok=True)
    plot(rows, docs.parent / "img" / "catalogue-latency.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalogue", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recsys-catalogue"))
    parser.add_argument("--requests", type=int, default=_REQUESTS, help="requests per variant")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=Path, default=_REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="generate the data sets and build the bundles into --work, measure nothing: "
        "the long builds can then run while the machine is busy, the measurements later",
    )
    parser.add_argument(
        "--first-stage",
        type=Path,
        nargs="+",
        metavar="BUNDLE",
        help="only the bare first stage of these bundles, in turns for --rounds rounds, "
        "as JSON lines on stdout (two builds of one catalogue on one machine); writes nothing",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --first-stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.first_stage:
        compare_first_stage(args.first_stage, rounds=args.rounds, k=args.k, seed=args.seed)
        return 0
    if args.build_only:
        for items in (int(s) for s in args.sizes.split(",")):
            _, times = build_bundle(size_for(items), args.work, seed=args.seed)
            log.info("built %d items: %s", items, json.dumps(times))
        return 0
    rows = []
    for items in (int(s) for s in args.sizes.split(",")):
        row = measure(size_for(items), args.work, requests=args.requests, k=args.k, seed=args.seed)
        log.info("%s", json.dumps(row))
        rows.append(row)
    _RESULTS.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    command = "python -m bench.catalogue " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_docs(rows, args.docs, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
