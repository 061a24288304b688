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
            "(queue_full, timeout).",
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
