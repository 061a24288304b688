"""Serving benchmark: teacher, student and INT8 student behind the real HTTP service.

    python -m bench.serving --model-dir models/current --repeat 2

Starts `uvicorn app.main:app` on a free loopback port (once per server configuration),
drives it with a bounded closed-loop load generator in a separate process, and measures
throughput and p50/p95/p99 latency for:

- `/recommend` uncached (an LRU of one entry and users in a cycle: every request a miss)
  and cached (a warmed set of users: every request a hit), per model; the cached servers
  run with the closed loop off (FEEDBACK_ENABLED=false), so that the framework comparison
  measures the cache, and, with `--redis-url`, once more with it on
  (`recommend_cached_loop`: its Redis round trips per request);
- `/predict_rating` with one pair and with a batch of pairs, per model;
- the framework floor: `/_bench/floor`, a precomputed body of a /recommend answer's size;
- the inference floor, in-process on the service's own objects (bench/_ortfloor.py): the
  two stages of an uncached /recommend (query vector, inner-product search, pair graph on k
  items), whole-catalogue scoring by the pair graph (re-ranking throughput), the
  /predict_rating session runs, and the service's scoring path without HTTP;
- the load generator's ceiling: the same client against a trivial fixed-answer server;
- paired rounds for the targets over the floor: on each server but the closed-loop one,
  the floor and each /recommend it serves, back to back, round after round.

Admission control (app/admission.py) is set so that the uncached load measures throughput,
not refusals: every client of the highest concurrency may queue, for up to a minute.

Each run writes bench/results/serving-<timestamp>.json; the report (docs/BENCHMARKS.md and
PNG plots in docs/img/) is written from all runs of the invocation, so that their spread
shows. `--report-only FILE...` rewrites the report from saved runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from app.bundle import Bundle, load_bundle
from bench._ceiling import fixed_response_server
from bench._loadgen import LoadResult, LoadRunner, LoadSpec, build_get, build_post_json
from bench._machine import cpu_model
from bench._ortfloor import FloorConfig, FloorResult, measure_floors
from bench._report import compute_targets, write_report
from bench._server import HOST, uvicorn_server

logger = logging.getLogger("bench.serving")

MODELS = ("teacher", "student", "student_int8")
# The service's default slots per worker (app/config.py), stated so that runs compare.
INFERENCE_CONCURRENCY = 2
INFERENCE_QUEUE_SECONDS = 60.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    model_dir: Path
    workers: int
    concurrency: tuple[int, ...]
    max_requests: int
    max_seconds: float
    warmup_requests: int
    batch_pairs: int
    k: int
    intra_op_threads: int
    redis_url: str
    pin: bool
    cached_users: int
    seed: int
    # Back-to-back rounds of framework floor and uncached /recommend on each uncached server.
    paired_rounds: int = 5
    paired_seconds: float = 1.0


@dataclass(frozen=True)
class ServerConfig:
    """One server process: which file serves the student, whether lists are cached, and
    whether the closed loop (impressions and fresh state in Redis) is on."""

    name: str
    student_model: str
    cached: bool
    feedback: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str  # recommend_uncached | recommend_cached | predict_single | predict_batch | floor
    model: str  # teacher | student | student_int8 | framework
    requests: list[bytes]
    prewarm: list[bytes]


def _cpu_split(pin: bool) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """Server CPUs and load-generator CPUs: the last CPU for the load, the rest serve."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return frozenset(cpus[:-1]), frozenset(cpus[-1:])


def _recommend_requests(
    bundle: Bundle, users: Sequence[str], *, variant: str, k: int
) -> list[bytes]:
    headers = {"X-Variant": variant}
    return [
        build_get(f"/recommend?user_id={quote(u, safe='')}&k={k}", host=HOST, headers=headers)
        for u in users
    ]


def _predict_requests(
    bundle: Bundle, rng: np.random.Generator, *, variant: str, batch: int, n_bodies: int
) -> list[bytes]:
    headers = {"X-Variant": variant}
    requests = []
    for _ in range(n_bodies):
        users = rng.integers(0, bundle.n_users, size=batch)
        items = rng.integers(0, bundle.n_items, size=batch)
        pairs = [
            {"user_id": bundle.user_ids[u], "item_id": bundle.item_ids[i]}
            for u, i in zip(users.tolist(), items.tolist(), strict=True)
        ]
        body = orjson.dumps(pairs[0] if batch == 1 else {"pairs": pairs})
        requests.append(build_post_json("/predict_rating", body, host=HOST, headers=headers))
    return requests


def _scenarios(bundle: Bundle, server: ServerConfig, config: Config) -> list[Scenario]:
    rng = np.random.default_rng(config.seed)
    # The HTTP variant is always teacher or student; the INT8 file serves "student" on
    # a server started with STUDENT_MODEL=student_int8.
    served = {"teacher": "teacher", "student": server.student_model}
    if server.student_model == "student_int8":
        served = {"student": "student_int8"}
    scenarios: list[Scenario] = []
    if server.cached:
        if server.student_model == "student" and not server.feedback:
            scenarios.append(Scenario(
                "floor", "framework",
                [build_get(f"/_bench/floor?n={config.k}", host=HOST)], [],
            ))  # fmt: skip
        users = list(bundle.user_ids[: config.cached_users])
        name = "recommend_cached_loop" if server.feedback else "recommend_cached"
        for variant, model in served.items():
            requests = _recommend_requests(bundle, users, variant=variant, k=config.k)
            scenarios.append(Scenario(name, model, requests, requests))
        return scenarios
    # Every user once per cycle and a one-entry LRU: no request can hit.
    order = rng.permutation(bundle.n_users)
    users = [bundle.user_ids[i] for i in order.tolist()]
    for variant, model in served.items():
        scenarios.append(Scenario(
            "recommend_uncached", model,
            _recommend_requests(bundle, users, variant=variant, k=config.k), [],
        ))  # fmt: skip
    for variant, model in served.items():
        scenarios.append(Scenario(
            "predict_single", model,
            _predict_requests(bundle, rng, variant=variant, batch=1, n_bodies=500), [],
        ))  # fmt: skip
        scenarios.append(Scenario(
            "predict_batch", model,
            _predict_requests(bundle, rng, variant=variant, batch=config.batch_pairs,
                              n_bodies=64), [],
        ))  # fmt: skip
    return scenarios


def _queue_max(config: Config) -> int:
    return max(config.concurrency) * max(config.workers, 1)


def _server_env(server: ServerConfig, config: Config) -> dict[str, str]:
    return {
        "MODEL_DIR": str(config.model_dir),
        "STUDENT_MODEL": server.student_model,
        "REDIS_URL": config.redis_url if server.cached else "",
        "CACHE_MAX_ENTRIES": "100000" if server.cached else "1",
        "CACHE_TTL_SECONDS": "600",
        "BENCH_FLOOR_ENABLED": "true",
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": str(config.intra_op_threads),
        "MAX_BATCH_PAIRS": str(max(config.batch_pairs, 1000)),
        # Throughput, not refusals: every client may wait for a slot, for up to a minute.
        "INFERENCE_CONCURRENCY": str(INFERENCE_CONCURRENCY),
        "INFERENCE_QUEUE_MAX": str(_queue_max(config)),
        "INFERENCE_QUEUE_SECONDS": str(INFERENCE_QUEUE_SECONDS),
        "FEEDBACK_ENABLED": "true" if server.feedback else "false",
        "IMPRESSION_TTL_SECONDS": "600",
        "ADMIN_TOKEN": "",
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
    }


def _machine() -> dict[str, Any]:
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for package in ("onnxruntime", "fastapi", "starlette", "uvicorn", "numpy", "orjson"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": list(os.getloadavg()),
    }


def _ceiling_body(bundle: Bundle, *, k: int) -> bytes:
    """A JSON body of a /recommend answer's size, for the trivial server."""
    items = [
        {"item_id": bundle.item_ids[i], "title": bundle.titles[i], "score": 0.5, "rating": 3.5}
        for i in range(min(k, bundle.n_items))
    ]
    return orjson.dumps(
        {
            "user_id": bundle.user_ids[0],
            "variant": "student",
            "model_version": bundle.version,
            "items": items,
            "cached": False,
            "fallback": None,
        }
    )


def _log_point(scenario: str, model: str, result: LoadResult) -> None:
    logger.info(
        "%-18s %-12s c=%-3d %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  failed %d  cached %.2f",
        scenario,
        model,
        result.concurrency,
        result.throughput_rps,
        result.p50_ms,
        result.p99_ms,
        result.failed,
        result.cached_fraction,
    )


def _measure_floors(
    config: Config, bundle: Bundle, server_cpus: frozenset[int] | None
) -> list[FloorResult]:
    logger.info("inference floor: the bare model work, in-process")
    if server_cpus:
        # Same CPUs as the server, so that the floor and the service compare like for like.
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, server_cpus)
    try:
        return measure_floors(
            config.model_dir,
            student_models=[m for m in ("student", "student_int8") if bundle.has_model(m)],
            config=FloorConfig(
                intra_op_threads=config.intra_op_threads,
                batch_pairs=config.batch_pairs,
                k=config.k,
                max_iterations=config.max_requests,
                max_seconds=config.max_seconds,
                seed=config.seed,
            ),
        )
    finally:
        if server_cpus:
            os.sched_setaffinity(0, previous)


def _servers(bundle: Bundle, config: Config) -> list[ServerConfig]:
    servers = [
        ServerConfig("uncached-student", "student", cached=False),
        ServerConfig("cached-student", "student", cached=True),
    ]
    if config.redis_url:
        # The closed loop needs Redis; measured apart, so it does not blur the comparison.
        servers.append(ServerConfig("cached-student-loop", "student", cached=True, feedback=True))
    if bundle.has_model("student_int8"):
        servers += [
            ServerConfig("uncached-int8", "student_int8", cached=False),
            ServerConfig("cached-int8", "student_int8", cached=True),
        ]
    else:
        logger.warning("bundle has no student_int8 model; INT8 scenarios skipped")
    return servers


def _measure_ceiling(
    runner: LoadRunner, bundle: Bundle, config: Config, server_cpus: frozenset[int] | None
) -> list[dict[str, Any]]:
    logger.info("load generator ceiling: a trivial server with a fixed answer")
    points = []
    with fixed_response_server(_ceiling_body(bundle, k=config.k), cpus=server_cpus) as port:
        requests = [
            build_get(f"/recommend?user_id={u}&k={config.k}", host=HOST)
            for u in bundle.user_ids[:64]
        ]
        for concurrency in config.concurrency:
            result = runner.run(LoadSpec(
                host=HOST, port=port, requests=requests, concurrency=concurrency,
                max_requests=config.max_requests, max_seconds=config.max_seconds,
                warmup_requests=config.warmup_requests,
            ))  # fmt: skip
            points.append({
                "scenario": "loadgen_ceiling", "model": "client", "server": "fixed-response",
                **result.to_dict(),
            })  # fmt: skip
            _log_point("loadgen_ceiling", "client", result)
    return points


def _prewarm(runner: LoadRunner, port: int, scenario: Scenario, config: Config) -> None:
    if scenario.prewarm:
        # Several passes, so that every worker process holds every key.
        runner.run(LoadSpec(
            host=HOST, port=port, requests=scenario.prewarm,
            concurrency=min(max(config.concurrency), len(scenario.prewarm)),
            max_requests=len(scenario.prewarm) * max(config.workers, 1) * 3,
            max_seconds=max(config.max_seconds, 10.0),
        ))  # fmt: skip


def _measure_scenario(
    runner: LoadRunner, port: int, server: ServerConfig, scenario: Scenario, config: Config
) -> list[dict[str, Any]]:
    _prewarm(runner, port, scenario, config)
    points = []
    offset = 0
    for concurrency in config.concurrency:
        result = runner.run(LoadSpec(
            host=HOST, port=port, requests=scenario.requests, concurrency=concurrency,
            max_requests=config.max_requests, max_seconds=config.max_seconds,
            warmup_requests=config.warmup_requests, start_offset=offset,
        ))  # fmt: skip
        offset = result.extra["next_offset"]
        points.append({
            "scenario": scenario.name, "model": scenario.model, "server": server.name,
            **result.to_dict(),
        })  # fmt: skip
        _log_point(scenario.name, scenario.model, result)
    return points


def _measure_paired(
    runner: LoadRunner, port: int, bundle: Bundle, server: ServerConfig, config: Config
) -> list[dict[str, Any]]:
    """The framework floor and each /recommend the server serves (uncached, or cached from
    a warm cache), back to back on one server, round after round, at the lowest
    concurrency: the ratios of the targets over the floor.

    This machine's speed drifts (p50s of one scenario 30% apart a few minutes later), and a
    floor measured on another server minutes before carries that drift into the ratio;
    short alternating points on the same process share the same conditions, and the
    target is the median of the per-round ratios.
    """
    floor = [build_get(f"/_bench/floor?n={config.k}", host=HOST)]
    paired = {"recommend_uncached": "paired_uncached", "recommend_cached": "paired_cached"}
    scenarios = [s for s in _scenarios(bundle, server, config) if s.name in paired]
    for scenario in scenarios:
        _prewarm(runner, port, scenario, config)
    order = [("paired_floor", "framework", floor)] + [
        (paired[s.name], s.model, s.requests) for s in scenarios
    ]
    offsets: dict[str, int] = {}
    points = []
    for round_index in range(config.paired_rounds):
        for name, model, requests in order:
            result = runner.run(LoadSpec(
                host=HOST, port=port, requests=requests, concurrency=min(config.concurrency),
                max_requests=config.max_requests, max_seconds=config.paired_seconds,
                warmup_requests=config.warmup_requests, start_offset=offsets.get(model, 0),
            ))  # fmt: skip
            offsets[model] = result.extra["next_offset"]
            points.append({
                "scenario": name, "model": model, "server": server.name,
                "round": round_index, **result.to_dict(),
            })  # fmt: skip
    return points


def _measure_http(
    bundle: Bundle,
    config: Config,
    server_cpus: frozenset[int] | None,
    load_cpus: frozenset[int] | None,
) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    with LoadRunner(load_cpus) as runner:
        points += _measure_ceiling(runner, bundle, config, server_cpus)
        for server in _servers(bundle, config):
            env = _server_env(server, config)
            with uvicorn_server(env, workers=config.workers, cpus=server_cpus) as running:
                if not server.feedback:
                    # First on the server, as the other points are first on theirs: after
                    # the batch loads at high concurrency, misses ran slower for seconds.
                    points += _measure_paired(runner, running.port, bundle, server, config)
                for scenario in _scenarios(bundle, server, config):
                    points += _measure_scenario(runner, running.port, server, scenario, config)
    return points


def _retrieval_sizes(bundle: Bundle) -> dict[str, dict[str, int]]:
    """Per served variant, the first stage's memory: item matrix bytes and ANN index bytes."""
    sizes = {}
    for variant in ("teacher", "student"):
        entry = getattr(bundle.manifest.models, variant).retrieval
        if entry is None:
            continue
        ann_bytes = 0
        if entry.ann is not None:
            ann_bytes = (bundle.directory / entry.ann.file).stat().st_size
        sizes[variant] = {
            "rows": entry.items.rows,
            "dim": entry.items.dim,
            "items_bytes": entry.items.rows * entry.items.dim * 4,  # float32
            "ann_bytes": ann_bytes,
        }
    return sizes


def _run_config(
    config: Config, server_cpus: frozenset[int] | None, load_cpus: frozenset[int] | None
) -> dict[str, Any]:
    return {
        "workers": config.workers,
        "concurrency": list(config.concurrency),
        "max_requests": config.max_requests,
        "max_seconds": config.max_seconds,
        "warmup_requests": config.warmup_requests,
        "batch_pairs": config.batch_pairs,
        "k": config.k,
        "paired_rounds": config.paired_rounds,
        "paired_seconds": config.paired_seconds,
        "intra_op_threads": config.intra_op_threads,
        "cache": "redis" if config.redis_url else "in-process LRU",
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "load_cpus": sorted(load_cpus) if load_cpus else None,
        "admission": {
            "inference_concurrency": INFERENCE_CONCURRENCY,
            "queue_max": _queue_max(config),
            "queue_seconds": INFERENCE_QUEUE_SECONDS,
        },
        "feedback_loop": "off; on only in recommend_cached_loop"
        if config.redis_url
        else "off (no Redis)",
    }


def run_once(config: Config, *, results_dir: Path) -> dict[str, Any]:
    """One complete benchmark run; returns the result and writes it as JSON."""
    started_at = datetime.now(UTC)
    bundle = load_bundle(config.model_dir)
    server_cpus, load_cpus = _cpu_split(config.pin)
    machine = _machine()
    floors = _measure_floors(config, bundle, server_cpus)
    points = _measure_http(bundle, config, server_cpus, load_cpus)
    machine["loadavg_end"] = list(os.getloadavg())
    run = {
        "schema": 2,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "command": shlex.join(["python", "-m", "bench.serving", *sys.argv[1:]]),
        "bundle_version": bundle.version,
        "n_users": bundle.n_users,
        "n_items": bundle.n_items,
        "retrieval": _retrieval_sizes(bundle),
        "machine": machine,
        "config": _run_config(config, server_cpus, load_cpus),
        "ort_floor": [f.to_dict() for f in floors],
        "points": points,
    }
    run["targets"] = compute_targets(run)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"serving-{stamp}.json"
    path.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    logger.info("wrote %s", path)
    run["_path"] = str(path)
    return run


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/current"))
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--concurrency", default="1,4,16", help="comma-separated numbers of concurrent connections"
    )
    parser.add_argument(
        "--max-requests", type=int, default=3000, help="requests per load point, at most"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=3.0, help="seconds per load point, at most"
    )
    parser.add_argument("--warmup-requests", type=int, default=20)
    parser.add_argument("--batch-pairs", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="ORT_INTRA_OP_THREADS of the server and of the session floor",
    )
    parser.add_argument(
        "--redis-url",
        default="",
        help="cache the 'cached' servers in this Redis (default: in-process LRU)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not give the load generator its own CPU"
    )
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=5,
        help="rounds of floor and uncached /recommend back to back (the uncached targets)",
    )
    parser.add_argument(
        "--paired-seconds", type=float, default=1.0, help="seconds per point of a paired round"
    )
    parser.add_argument("--cached-users", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="complete runs, one after another")
    parser.add_argument("--results-dir", type=Path, default=_REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="write the Markdown report here (e.g. docs/BENCHMARKS.md)",
    )
    parser.add_argument(
        "--img-dir",
        type=Path,
        default=None,
        help="PNG plots go here (default: img/ next to --docs)",
    )
    parser.add_argument(
        "--note", default="", help="a sentence for the report, e.g. what else ran on the machine"
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        nargs="+",
        default=None,
        help="write the report from these saved runs instead of running",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = _parse_args(argv)
    if args.report_only:
        runs = [
            {**orjson.loads(path.read_bytes()), "_path": str(path)} for path in args.report_only
        ]
    else:
        config = Config(
            model_dir=args.model_dir,
            workers=args.workers,
            concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
            max_requests=args.max_requests,
            max_seconds=args.max_seconds,
            warmup_requests=args.warmup_requests,
            batch_pairs=args.batch_pairs,
            k=args.k,
            intra_op_threads=args.intra_op_threads,
            redis_url=args.redis_url,
            pin=not args.no_pin,
            cached_users=args.cached_users,
            seed=args.seed,
            paired_rounds=args.paired_rounds,
            paired_seconds=args.paired_seconds,
        )
        runs = []
        for index in range(args.repeat):
            logger.info("run %d of %d", index + 1, args.repeat)
            started = time.monotonic()
            runs.append(run_once(config, results_dir=args.results_dir))
            logger.info("run %d took %.0f s", index + 1, time.monotonic() - started)
    failed = sum(p["failed"] for run in runs for p in run["points"])
    if args.docs is not None:
        img_dir = args.img_dir or args.docs.parent / "img"
        write_report(runs, docs_path=args.docs, img_dir=img_dir, note=args.note)
        logger.info("wrote %s and plots in %s", args.docs, img_dir)
    if failed:
        logger.error("%d requests failed", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
