"""A bounded closed-loop HTTP/1.1 load generator over keep-alive loopback connections.

A raw asyncio protocol instead of an HTTP client library: httpx costs several hundred
microseconds of client CPU per request, which on a small machine would make the load
generator, not the service, the thing being measured. It runs in its own process (see
`LoadRunner`) so that its CPU use does not share an interpreter with the benchmark driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_HEADER_END = b"\r\n\r\n"
_CACHED_MARK = b'"cached":true'
_STATUS_SLICE = slice(9, 12)  # "HTTP/1.1 200 ..."


def build_get(path: str, *, host: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def build_post_json(
    path: str, body: bytes, *, host: str, headers: dict[str, str] | None = None
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class LoadSpec:
    """One load point: `requests` are raw HTTP requests, sent in order and cycled."""

    host: str
    port: int
    requests: Sequence[bytes]
    concurrency: int
    max_requests: int
    max_seconds: float
    warmup_requests: int = 0
    # Where in `requests` to begin: a caller that cycles distinct keys across load points
    # passes on where the last point stopped, so that no key repeats early.
    start_offset: int = 0


@dataclass
class LoadResult:
    concurrency: int
    completed: int
    failed: int
    status_counts: dict[str, int]
    errors: list[str]
    elapsed_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    cached_fraction: float
    mean_body_bytes: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body_start = -1
        self._body_length = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered subclasses of asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._maybe_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    def _maybe_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._body_start < 0:
            end = self._buffer.find(_HEADER_END)
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:
                waiter.set_exception(ConnectionError("response without content-length"))
                return
            stop = head.find(b"\r\n", marker + 2)
            value = head[marker + 17 : stop if stop > 0 else None]
            self._body_start = end + len(_HEADER_END)
            self._body_length = int(value.strip())
        stop = self._body_start + self._body_length
        if len(self._buffer) < stop:
            return
        status = int(self._buffer[_STATUS_SLICE])
        body = bytes(self._buffer[self._body_start : stop])
        del self._buffer[:stop]
        self._body_start = self._body_length = -1
        waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter


async def _open(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, host, port)
    return protocol


async def _drive(
    spec: LoadSpec, *, n_requests: int, max_seconds: float, offset: int
) -> dict[str, Any]:
    latencies: list[int] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    cached = 0
    body_bytes = 0
    issued = 0
    requests = spec.requests
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal issued, cached, body_bytes
        conn: _Connection | None = None
        while issued < n_requests and time.perf_counter() < deadline:
            raw = requests[(offset + issued) % len(requests)]
            issued += 1
            try:
                if conn is None:
                    conn = await _open(spec.host, spec.port)
                started = time.perf_counter_ns()
                status, body = await conn.request(raw)
                latencies.append(time.perf_counter_ns() - started)
            except (OSError, ValueError) as exc:
                # A failed request is a result, not a crash of the benchmark.
                statuses["error"] = statuses.get("error", 0) + 1
                if len(errors) < 5:
                    errors.append(repr(exc))
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                continue
            key = str(status)
            statuses[key] = statuses.get(key, 0) + 1
            if status >= 400 and len(errors) < 5:
                errors.append(f"{status}: {body[:200]!r}")
            body_bytes += len(body)
            if _CACHED_MARK in body:
                cached += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    return {
        "latencies_ns": latencies,
        "statuses": statuses,
        "errors": errors,
        "cached": cached,
        "body_bytes": body_bytes,
        "elapsed_s": time.perf_counter() - started,
        "issued": issued,
    }


def summarise(
    latencies_ns: Sequence[int],
    *,
    elapsed_s: float,
    concurrency: int,
    statuses: dict[str, int],
    errors: list[str],
    cached: int,
    body_bytes: int,
) -> LoadResult:
    completed = len(latencies_ns)
    failed = sum(n for code, n in statuses.items() if code == "error" or int(code) >= 400)
    if completed:
        ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
        p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
        mean, worst = float(ms.mean()), float(ms.max())
    else:
        p50 = p95 = p99 = mean = worst = float("nan")
    return LoadResult(
        concurrency=concurrency,
        completed=completed,
        failed=failed,
        status_counts=statuses,
        errors=errors,
        elapsed_s=elapsed_s,
        throughput_rps=completed / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=mean,
        max_ms=worst,
        cached_fraction=cached / completed if completed else 0.0,
        mean_body_bytes=body_bytes / completed if completed else 0.0,
    )


async def run_load_async(spec: LoadSpec) -> LoadResult:
    if not spec.requests:
        raise ValueError("a load point needs at least one request")
    offset = spec.start_offset
    if spec.warmup_requests:
        warm = await _drive(
            spec, n_requests=spec.warmup_requests, max_seconds=spec.max_seconds, offset=offset
        )
        offset += warm["issued"]
    raw = await _drive(
        spec, n_requests=spec.max_requests, max_seconds=spec.max_seconds, offset=offset
    )
    result = summarise(
        raw["latencies_ns"],
        elapsed_s=raw["elapsed_s"],
        concurrency=spec.concurrency,
        statuses=raw["statuses"],
        errors=raw["errors"],
        cached=raw["cached"],
        body_bytes=raw["body_bytes"],
    )
    result.extra["next_offset"] = offset + raw["issued"]
    return result


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Entry point in the load process; returns a plain dict so that it pickles cheaply."""
    try:
        import uvloop  # noqa: PLC0415  # optional, and only wanted inside the load process
    except ImportError:
        return asyncio.run(run_load_async(spec)).to_dict()
    return uvloop.run(run_load_async(spec)).to_dict()


def _pin(cpus: frozenset[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


class LoadRunner(contextlib.AbstractContextManager["LoadRunner"]):
    """A long-lived load process, optionally pinned to its own CPUs."""

    def __init__(self, cpus: frozenset[int] | None = None) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=get_context("spawn"), initializer=_pin, initargs=(cpus,)
        )

    def run(self, spec: LoadSpec) -> LoadResult:
        result = self._pool.submit(run_load, spec).result(timeout=spec.max_seconds * 2 + 60)
        return LoadResult(**result)

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
