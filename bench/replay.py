"""Replay benchmark: a held-out test split played against the running service as if it
were live traffic, and the online figures it yields next to the bundle's offline ones.

    python -m bench.replay --model-dir models/current --data-dir $MOVIELENS_DIR

Starts `uvicorn app.main:app` on a free loopback port with Redis (the database is
flushed first: use one of its own) and SHADOW_PERCENT, resets the experiment, then for
each test user with at least one relevant test item (protocol P's population): GET
/recommend (k=10, the sticky A/B split decides the variant), then POST /feedback with all
of the user's test ratings, naming the request. A rating >= 4 on a served item is a hit,
so a variant's online hit rate is HR@10 on the users it served. Then it reads
GET /admin/experiment, measures /feedback throughput with single attributed clicks, and
writes docs/ONLINE.md and bench/results/replay-<timestamp>.json.

Bounded: at most --max-users users and --time-limit seconds of replay, then
--throughput-seconds of throughput measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import secrets
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench._replay_report import write_report
from bench._server import uvicorn_server
from training.data import load_dataset, make_split

logger = logging.getLogger("bench.replay")

_REPO_ROOT = Path(__file__).resolve().parents[1]
RELEVANT_MIN_RATING = 4.0  # protocol P
FEEDBACK_CHUNK = 100  # the service's default FEEDBACK_BATCH_LIMIT


@dataclass(frozen=True)
class Config:
    model_dir: Path
    data_dir: Path
    dataset: str
    redis_url: str
    k: int
    max_users: int
    time_limit_s: float
    concurrency: int
    shadow_percent: float
    throughput_seconds: float
    seed: int


@dataclass(frozen=True)
class UserReplay:
    user: str
    ratings: list[tuple[str, float, int]]  # (item, rating, timestamp) of the test split


def test_users(config: Config, split: str) -> list[UserReplay]:
    """The test split's users with at least one relevant item, their test ratings each."""
    dataset = load_dataset(config.data_dir, dataset=config.dataset)
    test = make_split(dataset, split=split, data_dir=config.data_dir, seed=config.seed).test
    by_user: dict[int, list[tuple[str, float, int]]] = {}
    for u, i, r, t in zip(
        test.user.tolist(),
        test.item.tolist(),
        test.rating.tolist(),
        test.timestamp.tolist(),
        strict=True,
    ):
        by_user.setdefault(u, []).append((dataset.item_ids[i - 1], float(r), int(t)))
    users = [
        UserReplay(dataset.user_ids[u - 1], rows)
        for u, rows in sorted(by_user.items())
        if any(r >= RELEVANT_MIN_RATING for _, r, _ in rows)
    ]
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(users))  # a random subset when --max-users cuts the list
    return [users[i] for i in sorted(order[: config.max_users].tolist())]


async def _replay_user(client: httpx.AsyncClient, user: UserReplay, k: int) -> dict[str, Any]:
    served = await client.get("/recommend", params={"user_id": user.user, "k": k})
    served.raise_for_status()
    body = served.json()
    events = [
        {
            "user_id": user.user,
            "item_id": item,
            "event": "rating",
            "value": rating,
            "request_id": body["request_id"],
            "timestamp": ts,
        }
        for item, rating, ts in user.ratings
    ]
    for start in range(0, len(events), FEEDBACK_CHUNK):
        response = await client.post(
            "/feedback", json={"events": events[start : start + FEEDBACK_CHUNK]}
        )
        response.raise_for_status()
    return {
        "request_id": body["request_id"],
        "user": user.user,
        "variant": body["variant"],
        "items": [i["item_id"] for i in body["items"]],
        "events": len(events),
    }


async def replay(base_url: str, users: list[UserReplay], config: Config) -> dict[str, Any]:
    """Replays users with `concurrency` in flight until done or out of time."""
    queue: asyncio.Queue[UserReplay] = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)
    served: list[dict[str, Any]] = []
    deadline = time.monotonic() + config.time_limit_s

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            try:
                user = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            served.append(await _replay_user(client, user, config.k))

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(config.concurrency)))
    return {
        "users": len(served),
        "users_available": len(users),
        "events": sum(s["events"] for s in served),
        "seconds": time.monotonic() - started,
        "timed_out": bool(queue.qsize()),
        "served": served,
    }


async def _settled_readout(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """The readout once shadow work has stopped moving (the queue drained)."""
    last, stable_since = None, time.monotonic()
    deadline = time.monotonic() + 60
    while True:
        readout = (await client.get("/admin/experiment", headers=headers)).json()
        shadow = readout["shadow"]
        done = (shadow["scored"], shadow["failed"])
        if done != last:
            last, stable_since = done, time.monotonic()
        if time.monotonic() - stable_since > 1.5 or time.monotonic() > deadline:
            return readout
        await asyncio.sleep(0.3)


async def feedback_throughput(
    base_url: str, served: list[dict[str, Any]], *, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Single attributed clicks on served items, closed loop, for `seconds`."""
    latencies: list[float] = []
    failures = 0
    stop = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal failures
        n = offset
        while time.monotonic() < stop:
            one = served[n % len(served)]
            n += concurrency
            click = {
                "user_id": one["user"],
                "item_id": one["items"][n % len(one["items"])],
                "event": "click",
                "request_id": one["request_id"],
            }
            started = time.perf_counter()
            response = await client.post("/feedback", json=click)
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 202

    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client, i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "concurrency": concurrency,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _manifest(model_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((model_dir / "manifest.json").read_text())
    return manifest


def _server_env(config: Config, token: str) -> dict[str, str]:
    return {
        "MODEL_DIR": str(config.model_dir),
        "REDIS_URL": config.redis_url,
        "ADMIN_TOKEN": token,
        "SHADOW_PERCENT": str(config.shadow_percent),
        "AB_STUDENT_PERCENT": "50",
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
    }


async def _drive(
    base_url: str, users: list[UserReplay], config: Config, token: str
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        (await client.put("/admin/experiment/reset", headers=headers)).raise_for_status()
    replayed = await replay(base_url, users, config)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        readout = await _settled_readout(client, headers)
    throughput = await feedback_throughput(
        base_url,
        replayed["served"],
        seconds=config.throughput_seconds,
        concurrency=config.concurrency,
    )
    return {"replay": replayed, "readout": readout, "feedback_throughput": throughput}


def run(config: Config, argv: Sequence[str]) -> dict[str, Any]:
    manifest = _manifest(config.model_dir)
    split = manifest["dataset"]["split"]
    if split == "none":
        raise SystemExit("the bundle was trained on all data (--split none): no held-out test")
    users = test_users(config, split)
    logger.info("replaying up to %d users of split %s", len(users), split)
    client = redis.Redis.from_url(config.redis_url)
    client.flushdb()  # the experiment and the event log of this run only
    client.close()
    token = secrets.token_hex(16)
    with uvicorn_server(_server_env(config, token)) as server:
        measured = asyncio.run(_drive(server.base_url, users, config, token))
    # What each user was served, so that the online figures can be recomputed offline.
    measured["replay"]["served"] = [
        {key: one[key] for key in ("user", "variant", "items")}
        for one in measured["replay"]["served"]
    ]
    return {
        "command": "python -m bench.replay " + shlex.join(argv),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Other work on the machine shows here: the service shares its CPUs with it.
        "load_average_after": os.getloadavg(),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "bundle": {
            "dir": str(config.model_dir.resolve()),
            "version": manifest["version"],
            "dataset": manifest["dataset"],
            "quick": bool(manifest.get("training", {}).get("quick", False)),
            "offline": {m: spec.get("metrics", {}) for m, spec in manifest["models"].items()},
        },
        "config": {
            "k": config.k,
            "max_users": config.max_users,
            "time_limit_s": config.time_limit_s,
            "concurrency": config.concurrency,
            "shadow_percent": config.shadow_percent,
        },
        **measured,
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="bundle to serve")
    parser.add_argument("--data-dir", type=Path, required=True, help="the bundle's data set")
    parser.add_argument("--dataset", default="ml-100k", help="data set format (default ml-100k)")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="a Redis database of its own: it is flushed (default DB 14)",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=1000)
    parser.add_argument("--time-limit", type=float, default=300.0, help="replay seconds at most")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--shadow-percent", type=float, default=100.0)
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=Path, default=_REPO_ROOT / "docs" / "ONLINE.md")
    parser.add_argument("--results-dir", type=Path, default=_REPO_ROOT / "bench" / "results")
    parser.add_argument("--note", default="", help="how the bundle was built, for the report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raw = list(sys.argv[1:] if argv is None else argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    args = _parse_args(raw)
    config = Config(
        model_dir=args.model_dir,
        data_dir=args.data_dir,
        dataset=args.dataset,
        redis_url=args.redis_url,
        k=args.k,
        max_users=args.max_users,
        time_limit_s=args.time_limit,
        concurrency=args.concurrency,
        shadow_percent=args.shadow_percent,
        throughput_seconds=args.throughput_seconds,
        seed=args.seed,
    )
    result = run(config, raw)
    result["note"] = args.note
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results_dir / f"replay-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_report(result, args.docs, results_file=out)
    logger.info("wrote %s and %s", out, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
