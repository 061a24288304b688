"""ServingState: one verified bundle with its sessions, swapped as a whole on reload.

Requests take one reference to the current state and use only it, so a reload in the
middle of a request never mixes two bundles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from app.bundle import Bundle, load_bundle
from app.inference import ModelRunner, Prediction, choose_providers, top_k
from app.metrics import Metrics

logger = logging.getLogger(__name__)

Fallback = Literal["popular", "cold_start"]
_DECIMALS = 4


@dataclass(frozen=True)
class Recommendation:
    items: list[dict[str, Any]]
    fallback: Fallback | None


@dataclass(frozen=True)
class ServingState:
    """Immutable after construction; every array here is shared read-only by all requests."""

    bundle: Bundle
    runners: Mapping[str, ModelRunner]
    metrics: Metrics
    # The whole catalogue as one batch, built once instead of per request.
    catalogue_items: npt.NDArray[np.int64] = field(repr=False)  # [n_items]
    catalogue_item_feats: npt.NDArray[np.int64] = field(repr=False)  # [n_items, Fi]
    catalogue_genres: npt.NDArray[np.float32] = field(repr=False)  # [n_items, G]

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
        """A user feature row [Fu] from raw query values; None when no field was given."""
        fields = self.bundle.feature_map.user_fields
        if not any(values.get(spec.name) is not None for spec in fields):
            return None
        return np.array([spec.encode(values.get(spec.name)) for spec in fields], dtype=np.int64)

    # -- scoring -----------------------------------------------------------------------

    def _run(
        self,
        variant: str,
        *,
        endpoint: str,
        user: npt.NDArray[np.int64],
        item: npt.NDArray[np.int64],
        user_feats: npt.NDArray[np.int64],
        item_feats: npt.NDArray[np.int64],
        item_genres: npt.NDArray[np.float32],
    ) -> Prediction:
        runner = self.runners[variant]
        started = time.perf_counter()
        prediction = runner.run(
            user=user,
            item=item,
            user_feats=user_feats,
            item_feats=item_feats,
            item_genres=item_genres,
        )
        self.metrics.model_inference_seconds.labels(
            variant=variant, endpoint=endpoint, provider=runner.provider
        ).observe(time.perf_counter() - started)
        return prediction

    def _score_catalogue(
        self, variant: str, *, user: int, user_row: npt.NDArray[np.int64], endpoint: str
    ) -> Prediction:
        n_items = self.catalogue_items.shape[0]
        return self._run(
            variant,
            endpoint=endpoint,
            user=np.full(n_items, user, dtype=np.int64),
            item=self.catalogue_items,
            user_feats=np.repeat(user_row[None, :], n_items, axis=0),
            item_feats=self.catalogue_item_feats,
            item_genres=self.catalogue_genres,
        )

    def _items(
        self,
        positions: npt.NDArray[np.int64],
        *,
        score: npt.NDArray[np.floating[Any]],
        rating: npt.NDArray[np.floating[Any]],
    ) -> list[dict[str, Any]]:
        item_ids, titles = self.bundle.item_ids, self.bundle.titles
        scores = np.round(score.astype(np.float64), _DECIMALS).tolist()
        ratings = np.round(rating.astype(np.float64), _DECIMALS).tolist()
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
        prediction = self._score_catalogue(
            variant, user=user, user_row=bundle.user_feats[user], endpoint="recommend"
        )
        exclude = None
        if exclude_seen:
            start, stop = bundle.seen_indptr[user], bundle.seen_indptr[user + 1]
            exclude = bundle.seen_indices[start:stop] - 1
        if extra_exclude is not None and extra_exclude.size:
            exclude = extra_exclude if exclude is None else np.concatenate((exclude, extra_exclude))
        positions = top_k(prediction.score, k, exclude=exclude)
        return Recommendation(
            items=self._items(
                positions, score=prediction.score[positions], rating=prediction.rating[positions]
            ),
            fallback=None,
        )

    def recommend_cold_start(
        self, variant: str, *, user_row: npt.NDArray[np.int64], k: int
    ) -> Recommendation:
        prediction = self._score_catalogue(variant, user=0, user_row=user_row, endpoint="recommend")
        positions = top_k(prediction.score, k)
        return Recommendation(
            items=self._items(
                positions, score=prediction.score[positions], rating=prediction.rating[positions]
            ),
            fallback="cold_start",
        )

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
        prediction = self._run(
            variant,
            endpoint="recommend",
            user=np.zeros(n, dtype=np.int64),
            item=popular,
            user_feats=np.zeros((n, fu), dtype=np.int64),
            item_feats=self.bundle.item_feats[popular],
            item_genres=self.bundle.item_genres[popular],
        )
        total = max(self.bundle.popular.shape[0], 1)
        rank_score = (total - np.arange(n, dtype=np.float64)) / total
        return Recommendation(
            items=self._items(popular - 1, score=rank_score, rating=prediction.rating),
            fallback="popular",
        )

    def predict(
        self, variant: str, *, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Ratings for (user index, item index) pairs; user index 0 is the cold-start user."""
        bundle = self.bundle
        prediction = self._run(
            variant,
            endpoint="predict_rating",
            user=users,
            item=items,
            user_feats=bundle.user_feats[users],
            item_feats=bundle.item_feats[items],
            item_genres=bundle.item_genres[items],
        )
        return prediction.rating

    def warm_up(self) -> None:
        """Run every session once at full catalogue size and once at batch size 1.

        The first run of a session allocates and tunes; doing it here keeps that cost out
        of the first user's request.
        """
        bundle = self.bundle
        user = 1 if bundle.n_users else 0
        n_items = self.catalogue_items.shape[0]
        for runner in self.runners.values():
            # Straight to the runner: warm-up runs must not show in the latency metrics.
            runner.run(
                user=np.full(n_items, user, dtype=np.int64),
                item=self.catalogue_items,
                user_feats=np.repeat(bundle.user_feats[user][None, :], n_items, axis=0),
                item_feats=self.catalogue_item_feats,
                item_genres=self.catalogue_genres,
            )
            runner.run(
                user=np.array([user], dtype=np.int64),
                item=np.array([1], dtype=np.int64),
                user_feats=bundle.user_feats[user : user + 1],
                item_feats=bundle.item_feats[1:2],
                item_genres=bundle.item_genres[1:2],
            )


def _frozen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # Shared by every request thread: a write would be a bug, so make it raise.
    array.setflags(write=False)
    return array


def load_state(
    model_dir: Path,
    *,
    metrics: Metrics,
    providers: list[str],
    intra_op_threads: int = 0,
    student_model: str = "student",
) -> ServingState:
    """Load, verify, open and warm up a bundle; raises BundleError or ModelLoadError."""
    bundle = load_bundle(model_dir)
    chosen = choose_providers(providers)
    student_file = student_model if bundle.has_model(student_model) else "student"
    if student_file != student_model:
        logger.warning(
            "bundle has no %s model, serving the student from student.onnx", student_model
        )
    runners = {
        "teacher": ModelRunner(
            bundle.model_path("teacher"),
            name="teacher",
            providers=chosen,
            intra_op_threads=intra_op_threads,
        ),
        "student": ModelRunner(
            bundle.model_path(student_file),
            name=student_file,
            providers=chosen,
            intra_op_threads=intra_op_threads,
        ),
    }
    state = ServingState(
        bundle=bundle,
        runners=runners,
        metrics=metrics,
        catalogue_items=_frozen(np.arange(1, bundle.n_items + 1, dtype=np.int64)),
        catalogue_item_feats=_frozen(np.ascontiguousarray(bundle.item_feats[1:])),
        catalogue_genres=_frozen(np.ascontiguousarray(bundle.item_genres[1:])),
    )
    state.warm_up()
    return state
