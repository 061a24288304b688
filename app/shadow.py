"""Shadow scoring: the variant that did not serve a request computes its list off the
response path, and the two lists are compared (overlap@k, rank correlation on the common
items, mean absolute rating difference on the served items).

A bounded queue and one worker thread: the request only does a non-blocking put, and when
the queue is full the job is dropped and counted, so shadow work can never delay or fail
a response. Results go to Prometheus and, fleet-wide, to the experiment's counts in Redis.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import redis

from app.loop_store import counts_key
from app.metrics import Metrics
from app.state import ServingState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Agreement:
    overlap: float  # |served ∩ shadow| / |served|
    rank_correlation: float | None  # Spearman on the common items; None under two of them
    rating_diff: float  # mean |served rating - shadow variant's rating| on the served items


def rank_correlation(served: Sequence[str], shadow: Sequence[str]) -> float | None:
    """Spearman's rho between the orders the two lists give their common items."""
    where = {item: rank for rank, item in enumerate(shadow)}
    common = [item for item in served if item in where]
    m = len(common)
    if m < 2:
        return None
    # `common` is in served order, so its served ranks are 0..m-1; the shadow ranks are
    # the positions of the same items once the shadow list is cut to the common ones.
    shadow_order = sorted(common, key=where.__getitem__)
    shadow_rank = {item: rank for rank, item in enumerate(shadow_order)}
    d2 = sum((rank - shadow_rank[item]) ** 2 for rank, item in enumerate(common))
    return 1.0 - 6.0 * d2 / (m * (m * m - 1))


def agreement(
    served: Sequence[str],
    shadow: Sequence[str],
    served_ratings: Sequence[float],
    shadow_ratings: Sequence[float],
) -> Agreement:
    """`shadow_ratings` are the shadow variant's ratings of the served items, in order."""
    n = max(len(served), 1)
    overlap = len(set(served) & set(shadow)) / n
    diffs = [abs(a - b) for a, b in zip(served_ratings, shadow_ratings, strict=True)]
    return Agreement(
        overlap=overlap,
        rank_correlation=rank_correlation(served, shadow),
        rating_diff=sum(diffs) / len(diffs) if diffs else 0.0,
    )


@dataclass(frozen=True)
class ShadowJob:
    state: ServingState
    experiment: str
    served_variant: str
    user: int  # bundle user index
    k: int
    exclude_seen: bool
    extra_exclude: npt.NDArray[np.int64] | None
    served_items: list[str]
    served_ratings: list[float]


class ShadowSink(Protocol):
    def record(self, experiment: str, result: Agreement | None, dropped: Counter[str]) -> None:
        """Adds one result (None: the job failed) and the drops since the last call."""

    def record_dropped(self, dropped: Counter[str]) -> None: ...

    def close(self) -> None: ...


class RedisShadowSink:
    """Adds shadow results to the experiment's counts; a blocking client (worker thread)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )

    def record(self, experiment: str, result: Agreement | None, dropped: Counter[str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        self._add_dropped(pipe, dropped)
        key = counts_key(experiment)
        if result is None:
            pipe.hincrby(key, "shadow:failed", 1)
        else:
            pipe.hincrby(key, "shadow:n", 1)
            pipe.hincrbyfloat(key, "shadow:overlap_sum", result.overlap)
            pipe.hincrbyfloat(key, "shadow:rating_diff_sum", result.rating_diff)
            if result.rank_correlation is not None:
                pipe.hincrby(key, "shadow:rank_n", 1)
                pipe.hincrbyfloat(key, "shadow:rank_sum", result.rank_correlation)
        pipe.execute()

    def record_dropped(self, dropped: Counter[str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        self._add_dropped(pipe, dropped)
        pipe.execute()

    @staticmethod
    def _add_dropped(pipe: redis.client.Pipeline, dropped: Counter[str]) -> None:
        for exp, n in dropped.items():
            pipe.hincrby(counts_key(exp), "shadow:dropped", n)

    def close(self) -> None:
        self._client.close()


def score(job: ShadowJob) -> Agreement:
    """Runs the other variant on the job's user and compares its list with the served one."""
    other = "student" if job.served_variant == "teacher" else "teacher"
    state = job.state
    shadow = state.recommend_known(
        other,
        user=job.user,
        k=job.k,
        exclude_seen=job.exclude_seen,
        extra_exclude=job.extra_exclude,
    )
    served_index = np.array(
        [state.item_position(item) or 0 for item in job.served_items], dtype=np.int64
    )
    ratings = (
        state.predict(
            other, users=np.full(served_index.size, job.user, dtype=np.int64), items=served_index
        ).tolist()
        if served_index.size
        else []
    )
    return agreement(
        job.served_items,
        [item["item_id"] for item in shadow.items],
        job.served_ratings,
        [round(float(r), 4) for r in ratings],
    )


class ShadowScorer:
    def __init__(self, *, queue_size: int, metrics: Metrics, sink: ShadowSink) -> None:
        self._queue: queue.Queue[ShadowJob] = queue.Queue(maxsize=queue_size)
        self._metrics = metrics
        self._sink = sink
        self._dropped: Counter[str] = Counter()
        self._dropped_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._sink.close()

    def submit(self, job: ShadowJob) -> bool:
        """Queues the job without waiting; False (dropped and counted) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._metrics.shadow_jobs_total.labels(outcome="dropped").inc()
            with self._dropped_lock:
                self._dropped[job.experiment] += 1
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._flush_dropped()  # drops after the last job would wait for the next
                continue
            self.run(job)

    def _take_dropped(self) -> Counter[str]:
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, Counter()
        return dropped

    def _flush_dropped(self) -> None:
        dropped = self._take_dropped()
        if not dropped:
            return
        try:
            self._sink.record_dropped(dropped)
        except (redis.RedisError, OSError) as exc:
            logger.warning("shadow drops not recorded", extra={"reason": str(exc)})

    def run(self, job: ShadowJob) -> Agreement | None:
        result: Agreement | None
        try:
            result = score(job)
        except Exception:
            logger.exception("shadow scoring failed")
            result = None
        metrics, variant = self._metrics, job.served_variant
        if result is None:
            metrics.shadow_jobs_total.labels(outcome="failed").inc()
        else:
            metrics.shadow_jobs_total.labels(outcome="scored").inc()
            metrics.shadow_overlap_at_k.labels(variant=variant).observe(result.overlap)
            metrics.shadow_rating_abs_diff.labels(variant=variant).observe(result.rating_diff)
            if result.rank_correlation is not None:
                metrics.shadow_rank_correlation.labels(variant=variant).observe(
                    result.rank_correlation
                )
        try:
            self._sink.record(job.experiment, result, self._take_dropped())
        except (redis.RedisError, OSError) as exc:
            logger.warning("shadow result not recorded", extra={"reason": str(exc)})
        return result
