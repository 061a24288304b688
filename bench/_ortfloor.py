"""The inference floor: the bare model work of one request, measured in-process.

Inputs are prepared beforehand, so that only the model work is timed; the difference
between this and an HTTP request's latency is everything the service adds (routing,
features, cache, JSON, HTTP, thread hand-offs).

An uncached /recommend is two stages (app/state.py `_retrieve`): the user's query vector
(a known user's row precomputed at load, RETRIEVAL_USER_VECTORS_MB, else a user-tower run),
an inner-product search over the bundle's item matrix for the k best unseen items, and the
model's ratings of those k: from its rating factors where it has them (the student's
known users, contract/rating_factors.py), else from its rating graph (the pair graph
without the score towers). Its floor,
`recommend`, is those three calls on the service's own objects (`load_state`), timed
together and stage by stage (`user_tower`, `retrieve`, `pair_k`). `tower_run` times the
user tower on the same users' rows (without the precomputed vectors), `rating_graph_k` and
`pair_graph_k` the rating graph and the whole pair graph on the same k items, in turns
(the graphs alone, also where the service rates with factors).
Scoring the whole catalogue with the pair graph (scores and ratings) is a separate work
item, `score_catalogue`: what re-ranking a large candidate list costs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from app.bundle import Bundle
from contract.session import open_session
from contract.towers import TOWER_OUTPUT

if TYPE_CHECKING:
    from app.state import ServingState

logger = logging.getLogger(__name__)

_N_FEEDS = 16
# What the service fetches from its rating sessions (app/inference.py ModelRunner), and
# what whole-catalogue scoring fetches from the pair graph.
_RATING = ["rating"]
_PAIR_OUTPUTS = ["rating", "score"]


# One timed piece of work on a prepared feed.
Work = Callable[[dict[str, np.ndarray]], object]


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


@dataclass(frozen=True)
class FloorConfig:
    intra_op_threads: int
    batch_pairs: int
    k: int
    max_iterations: int
    max_seconds: float
    seed: int = 0
    # Read between two calls of `recommend_service_cold`: more than a server CPU's
    # last-level cache (32 MiB on the machine of docs/BENCHMARKS.md).
    evict_mb: int = 64


def catalogue_inputs(bundle: Bundle, user: int) -> dict[str, np.ndarray]:
    """Every item of the catalogue paired with one user: a whole-catalogue re-ranking."""
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


def _summary(model: str, work: str, batch: int, ms: np.ndarray, elapsed: float) -> FloorResult:
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return FloorResult(
        model=model, work=work, batch=batch, iterations=int(ms.size), p50_ms=p50,
        p95_ms=p95, p99_ms=p99, throughput_rps=ms.size / elapsed if elapsed > 0 else 0.0,
    )  # fmt: skip


@dataclass(frozen=True)
class _TwoStageFeed:
    """One user's prepared inputs: tower feed, items to exclude, the pair feed of its k."""

    user: np.ndarray  # [1]
    user_row: np.ndarray  # [1, Fu]
    exclude: np.ndarray
    pairs: dict[str, np.ndarray]


def _two_stage_feeds(
    state: ServingState, variant: str, users: np.ndarray, k: int
) -> list[_TwoStageFeed]:
    """A first pass that finds each user's k items, so the timed pass needs no indexing."""
    bundle = state.bundle
    feeds = []
    for user in users.tolist():
        start, stop = bundle.seen_indptr[user], bundle.seen_indptr[user + 1]
        exclude = np.unique(bundle.seen_indices[start:stop] - 1)
        row = bundle.user_feats[user][None, :]
        query = state.towers[variant].vector(user, row[0])
        items = state.retrievers[variant].retrieve(query, k, exclude=exclude).positions + 1
        feeds.append(_TwoStageFeed(
            user=np.array([user], dtype=np.int64), user_row=row, exclude=exclude,
            pairs=pair_inputs(bundle, np.full(items.shape[0], user), items),
        ))  # fmt: skip
    return feeds


def _time_two_stage(
    state: ServingState, variant: str, feeds: list[_TwoStageFeed], config: FloorConfig
) -> tuple[np.ndarray, float]:
    """Per iteration, ms of [total, query vector, search, the k items' ratings]."""
    tower = state.towers[variant]
    retriever = state.retrievers[variant]
    rate = service_rating(state, variant)
    rows: list[tuple[int, int, int, int]] = []
    started = time.perf_counter()
    deadline = started + config.max_seconds
    while len(rows) < config.max_iterations and time.perf_counter() < deadline:
        feed = feeds[len(rows) % len(feeds)]
        t0 = time.perf_counter_ns()
        query = tower.vector(int(feed.user[0]), feed.user_row[0])
        t1 = time.perf_counter_ns()
        retriever.retrieve(query, config.k, exclude=feed.exclude)
        t2 = time.perf_counter_ns()
        rate(feed.pairs)
        t3 = time.perf_counter_ns()
        rows.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4) / 1e6, time.perf_counter() - started


def _two_stage_floors(
    state: ServingState, variant: str, model: str, users: np.ndarray, config: FloorConfig
) -> list[FloorResult]:
    feeds = _two_stage_feeds(state, variant, users, config.k)
    _time_two_stage(state, variant, feeds, replace(config, max_iterations=3))  # warm-up
    ms, elapsed = _time_two_stage(state, variant, feeds, config)
    n_items = state.bundle.n_items
    results = [_summary(model, "recommend", n_items, ms[:, 0], elapsed)]
    for column, (work, batch) in enumerate(
        [("user_tower", 1), ("retrieve", n_items), ("pair_k", config.k)], start=1
    ):
        # A stage's throughput alone: runs per second of its own time.
        results.append(_summary(model, work, batch, ms[:, column], ms[:, column].sum() / 1e3))
    # What the stages would cost without the service's two shortcuts: the user tower run on
    # the user's row (what a cold-start user still pays), and the whole pair graph, scores
    # included, against the rating graph on the same k items, in turns within one loop.
    towers = [{"user": feed.user, "user_feats": feed.user_row} for feed in feeds]
    tower = partial(state.towers[variant].session.run, [TOWER_OUTPUT])
    ms_tower, elapsed_tower = _time_in_turns([tower], towers, config)
    results.append(_summary(model, "tower_run", 1, ms_tower[:, 0], elapsed_tower))
    graphs = [
        partial(state.runners[variant].session.run, _RATING),
        partial(_pair_session(state, model, config).run, _PAIR_OUTPUTS),
    ]
    ms_graphs, _ = _time_in_turns(graphs, [feed.pairs for feed in feeds], config)
    for column, work in enumerate(("rating_graph_k", "pair_graph_k")):
        own = ms_graphs[:, column]
        results.append(_summary(model, work, config.k, own, own.sum() / 1e3))
    return results


def service_rating(state: ServingState, variant: str) -> Work:
    """Rates a feed's pairs as the service does (app/state.py `_rate`): the rating factors
    when the model has them and every user is known, else the rating graph."""
    runner = state.runners[variant]

    def rate(feed: dict[str, np.ndarray]) -> object:
        rating = runner.rate_known(feed["user"], feed["item"])
        return rating if rating is not None else runner.session.run(_RATING, feed)

    return rate


def _time_in_turns(
    works: Sequence[Work], feeds: list[dict[str, np.ndarray]], config: FloorConfig
) -> tuple[np.ndarray, float]:
    """Per iteration, ms of each work on the same feed [iterations, works], and the
    seconds the loop took. With several works they run one after the other, a fair
    comparison of graphs (neither gets a warmer cache or a quieter machine)."""
    for feed in feeds[:3]:
        for work in works:
            work(feed)
    rows: list[list[int]] = []
    started = time.perf_counter()
    deadline = started + config.max_seconds
    while len(rows) < config.max_iterations and time.perf_counter() < deadline:
        feed = feeds[len(rows) % len(feeds)]
        row = []
        for work in works:
            t0 = time.perf_counter_ns()
            work(feed)
            row.append(time.perf_counter_ns() - t0)
        rows.append(row)
    ms = np.asarray(rows, dtype=np.float64).reshape(-1, len(works)) / 1e6
    return ms, time.perf_counter() - started


def _pair_session(state: ServingState, model: str, config: FloorConfig) -> ort.InferenceSession:
    """The model's pair graph (scores and ratings), which the service does not run."""
    return open_session(
        state.bundle.model_path(model), intra_op_threads=config.intra_op_threads, inter_op_threads=1
    )


def _session_floors(
    state: ServingState, variant: str, model: str, rng: np.random.Generator, config: FloorConfig
) -> list[FloorResult]:
    """Session runs alone: the pair graph's scores and ratings over the whole catalogue (what
    re-ranking a candidate list needs), and the service's rating of one pair and of a batch
    of pairs of known users (/predict_rating: the rating factors where the model has them)."""
    bundle = state.bundle
    users = rng.integers(1, bundle.n_users + 1, size=_N_FEEDS)
    work: dict[str, tuple[int, list[dict[str, np.ndarray]]]] = {
        "score_catalogue": (bundle.n_items, [catalogue_inputs(bundle, int(u)) for u in users]),
        "predict_single": (1, [
            pair_inputs(bundle, np.array([u]), rng.integers(1, bundle.n_items + 1, size=1))
            for u in users
        ]),
        "predict_batch": (config.batch_pairs, [
            pair_inputs(bundle, rng.integers(1, bundle.n_users + 1, size=config.batch_pairs),
                        rng.integers(1, bundle.n_items + 1, size=config.batch_pairs))
            for _ in range(_N_FEEDS)
        ]),
    }  # fmt: skip
    rate = service_rating(state, variant)
    pair = partial(_pair_session(state, model, config).run, _PAIR_OUTPUTS)
    results = []
    for name, (batch, feeds) in work.items():
        ms, elapsed = _time_in_turns([pair if name == "score_catalogue" else rate], feeds, config)
        results.append(_summary(model, name, batch, ms[:, 0], elapsed))
    return results


def _service_floor(
    state: ServingState, variant: str, model: str, config: FloorConfig, *, evict: bool = False
) -> FloorResult:
    """The service's own uncached /recommend without HTTP: `recommend_known` on app.state
    (seen-item mask, both stages, item rows), so that what the Python path costs shows
    apart from what the web stack and its thread hand-offs cost.

    With `evict`, every call starts with cold CPU caches (`recommend_service_cold`): before
    it, untimed, the loop reads a buffer larger than the last-level cache. A tight loop
    keeps the item matrix, the graph's weights and the code in cache; a served request
    finds them evicted by the web stack between two misses and by whatever else runs on the
    machine, and that, not the work, is most of what it pays beyond this row.
    """
    n_users = state.bundle.n_users
    flush = np.ones(config.evict_mb * 2**20 // 8) if evict else None
    latencies: list[int] = []
    started = time.perf_counter()
    deadline = started + config.max_seconds
    while len(latencies) < config.max_iterations and time.perf_counter() < deadline:
        if flush is not None:
            flush.sum()
        user = 1 + len(latencies) % n_users
        t0 = time.perf_counter_ns()
        state.recommend_known(variant, user=user, k=config.k, exclude_seen=True)
        latencies.append(time.perf_counter_ns() - t0)
    ms = np.asarray(latencies, dtype=np.float64) / 1e6
    elapsed = time.perf_counter() - started
    work = "recommend_service_cold" if evict else "recommend_service"
    return _summary(model, work, state.bundle.n_items, ms, elapsed)


def measure_floors(
    model_dir: Path, *, student_models: list[str], config: FloorConfig
) -> list[FloorResult]:
    """Every work item for the teacher and each student file, on the service's own state.

    One state per student file (the INT8 student is served by a state loaded with
    STUDENT_MODEL=student_int8); the teacher is measured on the first.
    """
    from app.metrics import Metrics  # noqa: PLC0415  # app internals, only for this floor
    from app.state import load_state  # noqa: PLC0415

    results: list[FloorResult] = []
    for index, student_model in enumerate(student_models):
        state = load_state(
            model_dir,
            metrics=Metrics(),
            providers=["CPUExecutionProvider"],
            intra_op_threads=config.intra_op_threads,
            student_model=student_model,
        )
        variants = [("student", student_model)]
        if index == 0:
            variants.insert(0, ("teacher", "teacher"))
        for variant, model in variants:
            rng = np.random.default_rng(config.seed)
            users = rng.integers(1, state.bundle.n_users + 1, size=_N_FEEDS)
            results += _two_stage_floors(state, variant, model, users, config)
            results += _session_floors(state, variant, model, rng, config)
            results.append(_service_floor(state, variant, model, config))
            results.append(_service_floor(state, variant, model, config, evict=True))
    return results
