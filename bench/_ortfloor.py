"""The inference floor: the raw ONNX Runtime session run for the work of one request.

Inputs are prepared beforehand, so that only `session.run` is timed; the difference between
this and an HTTP request's latency is everything the service adds (routing, features,
top-k, JSON, HTTP).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.bundle import Bundle
from app.inference import ModelRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FloorResult:
    model: str
    work: str
    batch: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def catalogue_inputs(bundle: Bundle, user: int) -> dict[str, np.ndarray]:
    """What `/recommend` scores for a known user: every item of the catalogue."""
    n_items = bundle.n_items
    return {
        "user": np.full(n_items, user, dtype=np.int64),
        "item": np.arange(1, n_items + 1, dtype=np.int64),
        "user_feats": np.repeat(bundle.user_feats[user][None, :], n_items, axis=0),
        "item_feats": np.ascontiguousarray(bundle.item_feats[1:]),
        "item_genres": np.ascontiguousarray(bundle.item_genres[1:]),
    }


def pair_inputs(bundle: Bundle, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """What `/predict_rating` scores for (user index, item index) pairs."""
    return {
        "user": users.astype(np.int64),
        "item": items.astype(np.int64),
        "user_feats": bundle.user_feats[users],
        "item_feats": bundle.item_feats[items],
        "item_genres": bundle.item_genres[items],
    }


def _time_runs(
    session: ort.InferenceSession,
    feeds: list[dict[str, np.ndarray]],
    *,
    max_iterations: int,
    max_seconds: float,
) -> tuple[np.ndarray, float]:
    outputs = ["rating", "score"]
    for feed in feeds[:3]:
        session.run(outputs, feed)
    latencies: list[int] = []
    started = time.perf_counter()
    deadline = started + max_seconds
    while len(latencies) < max_iterations and time.perf_counter() < deadline:
        feed = feeds[len(latencies) % len(feeds)]
        t0 = time.perf_counter_ns()
        session.run(outputs, feed)
        latencies.append(time.perf_counter_ns() - t0)
    return np.asarray(latencies, dtype=np.float64) / 1e6, time.perf_counter() - started


def measure_floors(
    bundle: Bundle,
    *,
    models: list[str],
    intra_op_threads: int,
    batch_pairs: int,
    max_iterations: int,
    max_seconds: float,
    seed: int = 0,
) -> list[FloorResult]:
    """Session-run latency of each model for the three kinds of work the service does."""
    rng = np.random.default_rng(seed)
    n_feeds = 16
    users = rng.integers(1, bundle.n_users + 1, size=n_feeds)
    work: dict[str, tuple[int, list[dict[str, np.ndarray]]]] = {
        "recommend": (bundle.n_items, [catalogue_inputs(bundle, int(u)) for u in users]),
        "predict_single": (1, [
            pair_inputs(bundle, np.array([u]), rng.integers(1, bundle.n_items + 1, size=1))
            for u in users
        ]),
        "predict_batch": (batch_pairs, [
            pair_inputs(bundle, rng.integers(1, bundle.n_users + 1, size=batch_pairs),
                        rng.integers(1, bundle.n_items + 1, size=batch_pairs))
            for _ in range(n_feeds)
        ]),
    }  # fmt: skip
    results: list[FloorResult] = []
    for model in models:
        if not bundle.has_model(model):
            logger.warning("bundle has no %s model; no floor for it", model)
            continue
        # The service's own session set-up, so the floor runs with the same options.
        session = ModelRunner(
            bundle.model_path(model),
            name=model,
            providers=["CPUExecutionProvider"],
            intra_op_threads=intra_op_threads,
        ).session
        for name, (batch, feeds) in work.items():
            ms, elapsed = _time_runs(
                session, feeds, max_iterations=max_iterations, max_seconds=max_seconds
            )
            p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
            results.append(FloorResult(
                model=model, work=name, batch=batch, iterations=int(ms.size), p50_ms=p50,
                p95_ms=p95, p99_ms=p99, throughput_rps=ms.size / elapsed,
            ))  # fmt: skip
    return results


def measure_service_floor(
    model_dir: Path,
    *,
    student_models: list[str],
    intra_op_threads: int,
    k: int,
    max_iterations: int,
    max_seconds: float,
) -> list[FloorResult]:
    """The service's own work for an uncached /recommend without HTTP: features, session
    run, seen-item masking, top-k and item rows, called in-process on app.state.

    Between the session floor and the HTTP latency, it separates what the Python scoring
    path costs from what the web stack and its thread hand-offs cost.
    """
    from app.metrics import Metrics  # noqa: PLC0415  # app internals, only for this floor
    from app.state import load_state  # noqa: PLC0415

    results: list[FloorResult] = []
    for student_model in student_models:
        state = load_state(
            model_dir,
            metrics=Metrics(),
            providers=["CPUExecutionProvider"],
            intra_op_threads=intra_op_threads,
            student_model=student_model,
        )
        variants = ["teacher", "student"] if student_model == "student" else ["student"]
        for variant in variants:
            n_users = state.bundle.n_users
            latencies: list[int] = []
            started = time.perf_counter()
            deadline = started + max_seconds
            while len(latencies) < max_iterations and time.perf_counter() < deadline:
                user = 1 + len(latencies) % n_users
                t0 = time.perf_counter_ns()
                state.recommend_known(variant, user=user, k=k, exclude_seen=True)
                latencies.append(time.perf_counter_ns() - t0)
            elapsed = time.perf_counter() - started
            ms = np.asarray(latencies, dtype=np.float64) / 1e6
            p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
            model = "teacher" if variant == "teacher" else student_model
            results.append(FloorResult(
                model=model, work="recommend_service", batch=state.bundle.n_items,
                iterations=int(ms.size), p50_ms=p50, p95_ms=p95, p99_ms=p99,
                throughput_rps=ms.size / elapsed,
            ))  # fmt: skip
    return results
