"""ServingState: one verified bundle with its sessions, swapped as a whole on reload.

Requests take one reference to the current state and use only it, so a reload in the
middle of a request never mixes two bundles.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from app.bundle import Bundle, load_bundle
from app.inference import ModelRunner, TowerRunner, choose_providers
from app.metrics import Metrics
from app.retrieval import RetrievalSettings, Retriever, limit_search_threads, open_retriever
from contract.errors import BundleError
from contract.manifest import RetrievalEntry
from contract.rating_factors import RatingFactors, load_rating_factors

logger = logging.getLogger(__name__)

Fallback = Literal["popular", "cold_start"]
_DECIMALS = 4
_WARM_UP_K = 10
# Timed runs of each variant's two stages after warm-up (their median decides `inline`).
_TIMED_RUNS = 15


@dataclass(frozen=True)
class Recommendation:
    items: list[dict[str, Any]]
    fallback: Fallback | None


@dataclass(frozen=True)
class ServingState:
    """Immutable after construction; every array here is shared read-only by all requests."""

    bundle: Bundle
    runners: Mapping[str, ModelRunner]  # rating graphs: ratings of given pairs
    towers: Mapping[str, TowerRunner]  # user towers: the first stage's query vectors
    retrievers: Mapping[str, Retriever]  # item matrices (and ANN indexes) per variant
    metrics: Metrics
    # Variants whose /recommend model work is cheap enough to run on the event loop.
    inline: frozenset[str] = frozenset()

    @property
    def version(self) -> str:
        return self.bundle.version

    def runner(self, variant: str) -> ModelRunner:
        return self.runners[variant]

    def user_position(self, raw_user: str) -> int | None:
        """Index 1..n_users of a known user, None for an unknown one."""
        return self.bundle.user_index.get(raw_user)

    def item_position(self, raw_item: str) -> int | None:
        return self.bundle.item_index.get(raw_item)

    def encode_demographics(self, values: Mapping[str, object]) -> npt.NDArray[np.int64] | None:
        """A user feature row [Fu] from raw query values; None when it names nothing known.

        A blank or unrecognised value says as little as a missing one, so all three get
        the same popularity list: `?gender=` is not a cold-start user of unknown gender.
        """
        # The contract's encoding rules, the same training used for the known users' rows.
        row = self.bundle.feature_map.encode_user(values)
        return row if row.any() else None

    # -- scoring -----------------------------------------------------------------------

    def _rate(
        self,
        variant: str,
        *,
        user: npt.NDArray[np.int64],  # [B]
        item: npt.NDArray[np.int64],  # [B]
        user_feats: npt.NDArray[np.int64],  # [B, Fu]
    ) -> npt.NDArray[np.float32]:
        """The variant's ratings of (user, item) pairs, the items' rows from the bundle."""
        runner = self.runners[variant]
        rating = runner.rate_known(user, item)
        if rating is not None:
            return rating
        return runner.run(
            user=user,
            item=item,
            user_feats=user_feats,
            # take: a third of fancy indexing's cost on the few rows of a /recommend
            item_feats=self.bundle.item_feats.take(item, axis=0),
            item_genres=self.bundle.item_genres.take(item, axis=0),
        )

    def _run(
        self,
        variant: str,
        *,
        endpoint: str,
        user: npt.NDArray[np.int64],
        item: npt.NDArray[np.int64],
        user_feats: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """`_rate`, timed into the inference latency metric."""
        started = time.perf_counter()
        rating = self._rate(variant, user=user, item=item, user_feats=user_feats)
        provider = self.runners[variant].provider
        self.metrics.inference_histogram(variant, endpoint, provider).observe(
            time.perf_counter() - started
        )
        return rating

    def _retrieve(
        self,
        variant: str,
        *,
        user: int,
        user_row: npt.NDArray[np.int64],
        k: int,
        exclude: npt.NDArray[np.int64] | None,
    ) -> list[dict[str, Any]]:
        """Two stages: the user's query vector (precomputed, or the user tower) and an
        inner-product search give the k best items; the rating graph then rates only those k."""
        started = time.perf_counter()
        vector = self.towers[variant].vector(user, user_row)  # [D]
        hits = self.retrievers[variant].retrieve(vector, k, exclude=exclude)
        self.metrics.retrieval_histogram(variant, "exact" if hits.exact else "ann").observe(
            time.perf_counter() - started
        )
        items = hits.positions + 1
        n = items.shape[0]
        if n == 0:  # every item excluded; the teacher's rating graph refuses a batch of 0
            return []
        rating = self._run(
            variant,
            endpoint="recommend",
            user=np.full(n, user, dtype=np.int64),
            item=items,
            user_feats=np.repeat(user_row[None, :], n, axis=0),
        )
        return self._items(hits.positions, score=hits.scores, rating=rating)

    def _items(
        self,
        positions: npt.NDArray[np.int64],
        *,
        score: npt.NDArray[np.floating[Any]],
        rating: npt.NDArray[np.floating[Any]],
    ) -> list[dict[str, Any]]:
        item_ids, titles = self.bundle.item_ids, self.bundle.titles
        scores = score.astype(np.float64).round(_DECIMALS).tolist()
        ratings = rating.astype(np.float64).round(_DECIMALS).tolist()
        return [
            {"item_id": item_ids[p], "title": titles[p], "score": s, "rating": r}
            for p, s, r in zip(positions.tolist(), scores, ratings, strict=True)
        ]

    def recommend_known(
        self,
        variant: str,
        *,
        user: int,
        k: int,
        exclude_seen: bool,
        extra_exclude: npt.NDArray[np.int64] | None = None,
    ) -> Recommendation:
        """`extra_exclude`: catalogue positions also left out (items the user interacted
        with since the bundle was built: the fresh state of app/feedback.py)."""
        bundle = self.bundle
        parts = []
        if exclude_seen:
            start, stop = bundle.seen_indptr[user], bundle.seen_indptr[user + 1]
            parts.append(bundle.seen_indices[start:stop] - 1)
        if extra_exclude is not None and extra_exclude.size:
            parts.append(np.asarray(extra_exclude, dtype=np.int64))
        if len(parts) > 1:
            exclude: npt.NDArray[np.int64] | None = np.unique(np.concatenate(parts))
        else:  # one part needs no merging: the search only marks these positions
            exclude = parts[0] if parts else None
        items = self._retrieve(
            variant, user=user, user_row=bundle.user_feats[user], k=k, exclude=exclude
        )
        return Recommendation(items=items, fallback=None)

    def recommend_cold_start(
        self, variant: str, *, user_row: npt.NDArray[np.int64], k: int
    ) -> Recommendation:
        items = self._retrieve(variant, user=0, user_row=user_row, k=k, exclude=None)
        return Recommendation(items=items, fallback="cold_start")

    def recommend_popular(self, variant: str, *, k: int) -> Recommendation:
        """The popularity list; ratings are the model's for an unknown user.

        The score is the popularity rank mapped to (0, 1], so that it falls with the list
        order like every other response's score.
        """
        popular = self.bundle.popular[:k]
        if popular.size == 0:
            return Recommendation(items=[], fallback="popular")
        n = popular.shape[0]
        fu = self.bundle.user_feats.shape[1]
        rating = self._run(
            variant,
            endpoint="recommend",
            user=np.zeros(n, dtype=np.int64),
            item=popular,
            user_feats=np.zeros((n, fu), dtype=np.int64),
        )
        total = max(self.bundle.popular.shape[0], 1)
        rank_score = (total - np.arange(n, dtype=np.float64)) / total
        return Recommendation(
            items=self._items(popular - 1, score=rank_score, rating=rating),
            fallback="popular",
        )

    def predict(
        self, variant: str, *, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Ratings for (user index, item index) pairs; user index 0 is the cold-start user."""
        return self._run(
            variant,
            endpoint="predict_rating",
            user=users,
            item=items,
            user_feats=self.bundle.user_feats[users],
        )

    def warm_up(self) -> dict[str, float]:
        """Run every session and search, at the shapes requests use; returns each variant's
        median seconds for the two stages of one /recommend, timed after the first run.

        The first run of a session allocates and tunes; doing it here keeps that cost out
        of the first user's request. Feature values were checked against their
        vocabularies when the bundle was loaded, so every row is servable.
        """
        bundle = self.bundle
        user = 1 if bundle.n_users else 0
        users = np.array([0, user], dtype=np.int64)
        seconds = {}
        for variant in self.runners:
            # Straight to the sessions: warm-up runs must not show in the latency metrics.
            self._two_stages(variant, users, extra=bundle.popular[:_WARM_UP_K])
            times = []
            for _ in range(_TIMED_RUNS):
                started = time.perf_counter()
                self._two_stages(variant, users[1:])
                times.append(time.perf_counter() - started)
            seconds[variant] = statistics.median(times)
        return seconds

    def _two_stages(
        self,
        variant: str,
        users: npt.NDArray[np.int64],
        *,
        extra: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """The last user's query vector as a request gets it, a search, and the rating graph
        on its `_WARM_UP_K` items plus `extra` item indices; with `extra` (the first run),
        the user tower on every row of `users` too (the cold-start path's session)."""
        bundle = self.bundle
        user = int(users[-1])
        tower = self.towers[variant]
        if extra is not None:
            tower.vectors(users, bundle.user_feats[users])
        hits = self.retrievers[variant].retrieve(
            tower.vector(user, bundle.user_feats[user]), _WARM_UP_K
        )
        items = hits.positions + 1
        if extra is not None:
            items = np.concatenate([items, extra])
        n = items.shape[0]
        self._rate(
            variant,
            user=np.full(n, user, dtype=np.int64),
            item=items,
            user_feats=np.repeat(bundle.user_feats[user][None, :], n, axis=0),
        )


def _retrieval_entry(bundle: Bundle, model: str) -> RetrievalEntry:
    # The INT8 student is rated by its own graph but retrieves with the fp32 student's
    # towers: quantising the towers would change the ranking, not only the ratings.
    for name in (model, "student"):
        entry = getattr(bundle.manifest.models, name, None)
        if entry is not None and entry.retrieval is not None:
            return entry.retrieval
    raise BundleError(f"bundle {bundle.version} has no retrieval entry for {model!r}")


def _runner(
    bundle: Bundle,
    model: str,
    *,
    providers: list[str],
    intra_op_threads: int,
    factors_mb: float,
) -> ModelRunner:
    rating_graph = bundle.rating_graph_path(model)
    if rating_graph is None:
        logger.info(
            "bundle has no rating graph: ratings from the pair graph", extra={"model": model}
        )
    return ModelRunner(
        bundle.model_path(model),
        name=model,
        providers=providers,
        intra_op_threads=intra_op_threads,
        rating_scale=bundle.rating_scale,
        rating_graph=rating_graph,
        factors=_rating_factors(bundle, model, max_mb=factors_mb),
    )


def _rating_factors(bundle: Bundle, model: str, *, max_mb: float) -> RatingFactors | None:
    """The model's rating factors when the bundle has them and they fit in `max_mb`.

    They only save a session run per request, so a catalogue or user base whose rows
    would take more memory than that is rated by the graph instead.
    """
    ref = getattr(bundle.manifest.models, model).rating_factors
    if ref is None:
        return None
    mib = (ref.users.rows + ref.items.rows) * ref.users.dim * 4 / 2**20
    if mib > max_mb:
        logger.info(
            "rating factors not loaded: known users rated by the rating graph",
            extra={"model": model, "mib": round(mib, 1), "limit_mib": max_mb},
        )
        return None
    return load_rating_factors(
        bundle.directory, ref, n_users=bundle.n_users, n_items=bundle.n_items
    )


def _precompute_users(tower: TowerRunner, bundle: Bundle, *, dim: int, max_mb: float) -> None:
    started = time.perf_counter()
    rows = bundle.user_feats.shape[0]
    done = tower.precompute(bundle.user_feats, dim=dim, max_bytes=int(max_mb * 2**20))
    logger.info(
        "known users' query vectors precomputed" if done else "user tower runs per request",
        extra={
            "tower": tower.name,
            "users": rows - 1,
            "mib": round(rows * dim * 4 / 2**20, 1),
            "limit_mib": max_mb,
            "seconds": round(time.perf_counter() - started, 3) if done else None,
        },
    )


def load_state(
    model_dir: Path,
    *,
    metrics: Metrics,
    providers: list[str],
    intra_op_threads: int = 0,
    student_model: str = "student",
    retrieval: RetrievalSettings | None = None,
    rating_factors_mb: float = 1024.0,
    inline_max_ms: float = 0.0,
) -> ServingState:
    """Load, verify, open and warm up a bundle; raises BundleError or ModelLoadError.

    A variant whose two stages took under `inline_max_ms` at warm-up is marked `inline`;
    rating factors above `rating_factors_mb` are left unloaded (`_rating_factors`).
    """
    retrieval = retrieval or RetrievalSettings()
    limit_search_threads(retrieval.threads)
    bundle = load_bundle(model_dir)
    chosen = choose_providers(providers)
    student_file = student_model if bundle.has_model(student_model) else "student"
    if student_file != student_model:
        logger.warning(
            "bundle has no %s model, serving the student from student.onnx", student_model
        )
    runners = {
        variant: _runner(
            bundle,
            model,
            providers=chosen,
            intra_op_threads=intra_op_threads,
            factors_mb=rating_factors_mb,
        )
        for variant, model in (("teacher", "teacher"), ("student", student_file))
    }
    variants = {"teacher": "teacher", "student": student_file}
    entries = {variant: _retrieval_entry(bundle, model) for variant, model in variants.items()}
    state = ServingState(
        bundle=bundle,
        runners=runners,
        towers={
            variant: TowerRunner(
                bundle.directory / entry.user_tower.file,
                name=f"{variant}.user_tower",
                providers=chosen,
                intra_op_threads=intra_op_threads,
            )
            for variant, entry in entries.items()
        },
        retrievers={
            variant: open_retriever(
                bundle.directory, entry, n_items=bundle.n_items, settings=retrieval
            )
            for variant, entry in entries.items()
        },
        metrics=metrics,
    )
    for variant, entry in entries.items():
        _precompute_users(
            state.towers[variant], bundle, dim=entry.items.dim, max_mb=retrieval.user_vectors_mb
        )
    seconds = state.warm_up()
    inline = frozenset(v for v, t in seconds.items() if 1000 * t < inline_max_ms)
    logger.info(
        "two-stage work per /recommend at warm-up",
        extra={
            "ms": {v: round(1000 * t, 3) for v, t in seconds.items()},
            "on_event_loop": sorted(inline),
        },
    )
    return replace(state, inline=inline)
