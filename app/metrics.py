"""Prometheus metrics of docs/contracts.md section 3, single- or multi-process.

Histograms rather than summaries: histogram buckets add up across workers and replicas,
so fleet-wide percentiles stay computable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files of the `live*` gauge modes, one per worker pid: gauge_livemax_1234.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to judge
    return True


def forget_dead_workers(directory: str) -> list[int]:
    """Drops the live-gauge files of worker processes that no longer exist.

    gunicorn calls mark_process_dead from child_exit (app/gunicorn_conf.py), but uvicorn's
    own supervisor (`--workers`, deploy/docker/serve.sh) has no such hook: without this, a
    worker killed while serving an old bundle would keep model_info{version="old"} at 1.
    Counters and histograms of dead workers are kept: their counts still happened.
    """
    dead = []
    for path in Path(directory).glob("gauge_live*_*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            dead.append(int(match.group(1)))
    for pid in set(dead):
        prom_multiprocess.mark_process_dead(pid, directory)
    return sorted(set(dead))


class Metrics:
    """All service metrics, registered in their own registry (one per app instance)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess_enabled()
        self._children: dict[tuple[int | str, ...], Histogram] = {}
        self.http_request_duration_seconds = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template, method, status and A/B variant.",
            ["route", "method", "status", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_inference_seconds = Histogram(
            "model_inference_seconds",
            "Time inside one ONNX Runtime session run.",
            ["variant", "endpoint", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retrieval_seconds = Histogram(
            "retrieval_seconds",
            "First stage of /recommend: user tower plus inner-product search (exact or ann).",
            ["variant", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_requests_total = Counter(
            "cache_requests_total",
            "Recommendation cache look-ups by result (hit, miss, error).",
            ["result"],
            registry=self.registry,
        )
        self.cache_local_hits_total = Counter(
            "cache_local_hits_total",
            "Recommendation cache hits answered from process memory (no Redis round trip); "
            'a subset of cache_requests_total{result="hit"}.',
            registry=self.registry,
        )
        self.cache_write_errors_total = Counter(
            "cache_write_errors_total",
            "Failed or skipped writes to the recommendation cache.",
            registry=self.registry,
        )
        self.ab_assignments_total = Counter(
            "ab_assignments_total",
            "Requests assigned to a variant by the sticky A/B router (overrides excluded).",
            ["variant"],
            registry=self.registry,
        )
        self.inference_rejected_total = Counter(
            "inference_rejected_total",
            "Requests refused with 503 by admission control (app/admission.py), by reason "
            "(timeout: no slot within INFERENCE_QUEUE_SECONDS).",
            ["reason"],
            registry=self.registry,
        )
        # livemax: a worker that died no longer reports its model (forget_dead_workers),
        # one alive still does; a retired series is set to 0 by its worker.
        self.model_info = Gauge(
            "model_info",
            "The model each variant serves (value 1).",
            ["variant", "version", "provider"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._info_labels: list[tuple[str, str, str]] = []
        self._add_feedback_metrics()
        self._add_shadow_metrics()
        self._zero_loop_series()

    def _add_feedback_metrics(self) -> None:
        """The closed loop's (app/feedback.py). Per process like the rest; the fleet-wide
        totals the experiment readout uses are kept in Redis."""
        registry = self.registry
        self.recommendation_impressions_total = Counter(
            "recommendation_impressions_total",
            "Recommendation lists served and recorded as impressions.",
            ["variant"],
            registry=registry,
        )
        self.impression_write_errors_total = Counter(
            "impression_write_errors_total",
            "Lists served without a recorded impression (Redis unavailable).",
            registry=registry,
        )
        self.feedback_events_total = Counter(
            "feedback_events_total",
            "Feedback events written to the event log, by attributed variant ('none': no "
            "impression found) and event.",
            ["variant", "event"],
            registry=registry,
        )
        self.feedback_write_errors_total = Counter(
            "feedback_write_errors_total",
            "Feedback requests answered 503 because the event log could not be written.",
            registry=registry,
        )
        self.recommendation_hits_total = Counter(
            "recommendation_hits_total",
            "Positive feedback on a served item; each (request, item) counts once.",
            ["variant"],
            registry=registry,
        )
        self.recommendation_lists_hit_total = Counter(
            "recommendation_lists_hit_total",
            "Served lists with at least one hit (counted at their first hit); divided by "
            "recommendation_impressions_total it is the readout's hit rate.",
            ["variant"],
            registry=registry,
        )
        self.recommendation_hit_position = Histogram(
            "recommendation_hit_position",
            "1-based rank of the served item that got a hit.",
            ["variant"],
            buckets=(1, 2, 3, 5, 10, 20, 50, 100),
            registry=registry,
        )
        self.online_rating_abs_error = Histogram(
            "online_rating_abs_error",
            "Absolute error of the attributed variant's rating against the user's rating.",
            ["variant"],
            buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
            registry=registry,
        )

    def _add_shadow_metrics(self) -> None:
        """Shadow scoring's (app/shadow.py); `variant` is the variant that served."""
        registry = self.registry
        self.shadow_jobs_total = Counter(
            "shadow_jobs_total",
            "Shadow scoring jobs by outcome (scored, dropped: queue full, failed).",
            ["outcome"],
            registry=registry,
        )
        self.shadow_overlap_at_k = Histogram(
            "shadow_overlap_at_k",
            "Share of the served list that the other variant's list also holds, by served variant.",
            ["variant"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=registry,
        )
        self.shadow_rank_correlation = Histogram(
            "shadow_rank_correlation",
            "Spearman correlation of the two variants' orders of their common items "
            "(negative buckets: prometheus_client exports no _sum for it).",
            ["variant"],
            buckets=(-0.5, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=registry,
        )
        self.shadow_rating_abs_diff = Histogram(
            "shadow_rating_abs_diff",
            "Mean absolute difference of the two variants' ratings of the served items.",
            ["variant"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
            registry=registry,
        )

    def _zero_loop_series(self) -> None:
        """Every label value of the loop's metrics exported from the start, at zero: the
        dashboard and the alert then read 0 (or NaN for a ratio), not an absent series,
        before the first feedback or shadow job."""
        variants = ("teacher", "student")
        for metric in (
            self.recommendation_impressions_total,
            self.recommendation_hits_total,
            self.recommendation_lists_hit_total,
            self.recommendation_hit_position,
            self.online_rating_abs_error,
            self.shadow_overlap_at_k,
            self.shadow_rank_correlation,
            self.shadow_rating_abs_diff,
        ):
            for variant in variants:
                metric.labels(variant=variant)
        for variant in (*variants, "none"):
            for event in ("click", "rating", "purchase", "dismiss"):
                self.feedback_events_total.labels(variant=variant, event=event)
        for outcome in ("scored", "dropped", "failed"):
            self.shadow_jobs_total.labels(outcome=outcome)

    # Children looked up once per label values: `labels()` locks and validates on every
    # call, a cost of the same order as a small catalogue's whole first stage.
    def _child(self, metric: Histogram, *values: str) -> Histogram:
        key: tuple[int | str, ...] = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def inference_histogram(self, variant: str, endpoint: str, provider: str) -> Histogram:
        return self._child(self.model_inference_seconds, variant, endpoint, provider)

    def retrieval_histogram(self, variant: str, method: str) -> Histogram:
        return self._child(self.retrieval_seconds, variant, method)

    def set_model_info(self, entries: list[tuple[str, str, str]]) -> None:
        """Replace the (variant, version, provider) series after a load or reload."""
        for labels in self._info_labels:
            if labels not in entries:
                if self.multiprocess:
                    # Removing does not reach the shared files; zero marks it retired.
                    self.model_info.labels(*labels).set(0)
                else:
                    self.model_info.remove(*labels)
        for labels in entries:
            self.model_info.labels(*labels).set(1)
        self._info_labels = list(entries)

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this process's registry, or all workers' in multiprocess mode."""
        if self.multiprocess:
            forget_dead_workers(os.environ[MULTIPROC_ENV])
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
