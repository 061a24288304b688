"""Whether the closed loop keeps every impression and feedback event when a burst hits one
worker.

    python -m bench.loop_burst --model-dir models/current --docs docs/experiment.md

Per burst size N: N `/recommend` requests for random users sent at once over N kept-alive
connections to one fresh-started worker with Redis (the A/B split as configured), then on
the same connections one click `/feedback` per list served, naming its `request_id`, again
all at once. Counted: lists served (200) and refused by admission control (503, not a loss:
the client knows), impressions in Redis for the lists served, feedback accepted (202),
refused with 503 (Retry-After: the client knows) and refused with 422 because the
impression it names was never recorded: those events are the ones the A/B comparison loses.

The Redis database (`--redis-url`, DB 11 by default) must be empty, or `--flush` empties it;
it is emptied again at the end.
Writes bench/results/loop-burst-<timestamp>.json and, with --docs, the table between the
`bench.loop_burst` markers of that file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import shlex
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from app.bundle import BundleError, load_bundle
from bench._sections import replace_section
from bench._server import HOST, uvicorn_server

logger = logging.getLogger("bench.loop_burst")
_REPO_ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("<!-- bench.loop_burst:begin -->", "<!-- bench.loop_burst:end -->")


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _exchange(connection: Connection | None, request: bytes) -> tuple[int, bytes]:
    """One request on a kept-alive connection: (status, body); 0 when the connection failed
    (or was never opened)."""
    if connection is None:
        return 0, b""
    reader, writer = connection
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return 0, b""
    return (int(head[9:12]) if head[:5] == b"HTTP/" else 0), body


async def _open(port: int) -> Connection | None:
    try:
        return await asyncio.open_connection(HOST, port)
    except OSError:
        return None


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def _post(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _two_bursts(
    port: int, users: list[str]
) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], float]:
    """All `/recommend` at once, one per connection, then on the same connections all the
    feedback at once; (recommend answers, feedback answers, seconds of the first burst)."""
    connections = await asyncio.gather(*(_open(port) for _ in users))
    started = time.perf_counter()
    pairs = list(zip(connections, users, strict=True))
    answers = await asyncio.gather(
        *(_exchange(c, _get(f"/recommend?user_id={u}&k=10")) for c, u in pairs)
    )
    seconds = time.perf_counter() - started
    requests = [_feedback(u, s, body) for u, (s, body) in zip(users, answers, strict=True)]
    replies = await asyncio.gather(
        *(_exchange(c, r) for c, r in zip(connections, requests, strict=True) if r is not None)
    )
    for connection in connections:
        if connection is not None:
            connection[1].close()
    return list(answers), list(replies), seconds


def _feedback(user: str, status: int, body: bytes) -> bytes | None:
    """A click on the first item of a list served, naming its request id."""
    if status != 200:
        return None
    answer = json.loads(body)
    if not answer["items"]:
        return None
    event = {
        "user_id": user,
        "item_id": answer["items"][0]["item_id"],
        "event": "click",
        "request_id": answer["request_id"],
    }
    return _post("/feedback", json.dumps(event).encode())


def run_burst(port: int, users: tuple[str, ...], size: int, store: redis.Redis) -> dict[str, Any]:
    chosen = [random.choice(users) for _ in range(size)]
    stream_before = store.xlen("recsys:events")
    answers, replies, seconds = asyncio.run(_two_bursts(port, chosen))
    served = [json.loads(body) for status, body in answers if status == 200]
    with store.pipeline(transaction=False) as pipe:
        for answer in served:
            pipe.exists(f"recsys:imp:{answer['request_id']}")
        recorded = sum(pipe.execute())
    return {
        "burst": size,
        "recommend_status": _codes(answers),
        "recommend_seconds": round(seconds, 2),
        "served": len(served),
        "impressions_recorded": recorded,
        "feedback_sent": len(replies),
        "feedback_status": _codes(replies),
        "events_logged": store.xlen("recsys:events") - stream_before,
    }


def _codes(answers: list[tuple[int, bytes]]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(status for status, _ in answers).items())}


def _table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| burst | lists served | refused (503) | impressions recorded | feedback accepted "
        "| feedback 503 | feedback 422 (impression lost) | events logged |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        fb = run["feedback_status"]
        lines.append(
            f"| {run['burst']} | {run['served']} | {run['recommend_status'].get('503', 0)} "
            f"| {run['impressions_recorded']} | {fb.get('202', 0)} / {run['feedback_sent']} "
            f"| {fb.get('503', 0)} | {fb.get('422', 0)} | {run['events_logged']} |"
        )
    return lines


def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it."""
    return str(path.relative_to(_REPO_ROOT)) if path.is_relative_to(_REPO_ROOT) else str(path)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=_REPO_ROOT / "models" / "current")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    parser.add_argument("--sizes", default="250,1000,2000", help="burst sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="bursts per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=Path, help="fill the bench.loop_burst block of this file")
    parser.add_argument("--results-dir", type=Path, default=_REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: comma-separated integers, got {args.sizes!r}")
    if min(args.sizes) < 1 or args.repeat < 1:
        parser.error("--sizes and --repeat must be positive")
    return args


def _empty_store(url: str, *, flush: bool) -> redis.Redis:
    """The benchmark's Redis database, empty; one-line errors when it cannot be."""
    try:
        store = redis.Redis.from_url(url)
        if flush:
            store.flushdb()
        elif store.dbsize():
            raise SystemExit(f"{url} is not empty: pass --flush to empty it")
    except (redis.RedisError, ValueError) as exc:
        raise SystemExit(f"--redis-url {url}: {exc}") from None
    return store


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    random.seed(args.seed)
    model_dir = args.model_dir.resolve()
    try:
        users = load_bundle(model_dir).user_ids
    except BundleError as exc:
        raise SystemExit(f"--model-dir: {exc}") from None
    store = _empty_store(args.redis_url, flush=args.flush)
    env = {
        "MODEL_DIR": str(model_dir),
        "REDIS_URL": args.redis_url,
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "LOG_LEVEL": "WARNING",
    }
    runs = []
    try:
        for size in args.sizes:
            for _ in range(args.repeat):
                with uvicorn_server(env) as server:  # a fresh worker: the hardest case
                    runs.append(run_burst(server.port, users, size, store))
                logger.info("burst %s", json.dumps(runs[-1]))
    finally:
        store.flushdb()  # it holds only what the bursts wrote
    report = {
        "command": "python -m bench.loop_burst " + shlex.join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "bundle": model_dir.name,
        "runs": runs,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_file = args.results_dir / f"loop-burst-{stamp}.json"
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    table = _table(runs)
    logger.info("\n%s", "\n".join(table))
    if args.docs:
        section = "\n".join(
            [
                MARKERS[0],
                f"Measured by `{report['command']}` ({_shown(results_file)}); "
                f"{report['machine']}; bundle `{report['bundle']}`; one fresh worker per burst.",
                "",
                *table,
                MARKERS[1],
            ]
        )
        text = args.docs.read_text()
        args.docs.write_text(replace_section(text, section, begin=MARKERS[0], end=MARKERS[1]))


if __name__ == "__main__":
    main()
