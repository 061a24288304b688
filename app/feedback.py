"""The closed loop between /recommend and /feedback (docs/experiment.md).

* /recommend: read the user's fresh interactions (excluded from the list and part of the
  cache key), record the impression, hand a share of the uncached lists to the shadow
  scorer. None of it can fail or delay a response beyond the fast Redis timeout.
* /feedback: attribute each event to the impression that served the item (the named
  request, else the user's latest), then append it to the event log and move the
  fleet-wide counts in one atomic script. Nothing is acknowledged before it is written.
* readout: the counts of the current experiment with the statistics of app/experiment.py.

Needs Redis: without REDIS_URL (or with FEEDBACK_ENABLED off) there is no loop at all.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio.to_thread
import numpy as np
import numpy.typing as npt
import orjson

from app import experiment as stats
from app.config import Settings
from app.loop_store import LoopStore, StoredImpression, Written
from app.metrics import Metrics
from app.shadow import RedisShadowSink, ShadowJob, ShadowScorer
from app.state import ServingState

logger = logging.getLogger(__name__)

Event = Literal["click", "rating", "purchase", "dismiss"]
# Interactions that take an item out of the user's next lists (a purchase does not by
# itself: buying again can be what the user wants).
FRESH_EVENTS = frozenset({"rating", "click", "dismiss"})


class FeedbackRejectedError(Exception):
    """An event refers to something the service cannot accept; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class FeedbackEvent:
    user_id: str
    item_id: str
    event: Event
    value: float | None
    request_id: str | None
    timestamp: datetime | None


@dataclass(frozen=True)
class FreshState:
    positions: npt.NDArray[np.int64]  # catalogue positions (item index - 1) to exclude
    key_suffix: str  # changes whenever the set does, so older cached lists are not served


@dataclass(frozen=True)
class Attribution:
    impression: StoredImpression | None
    position: int  # 1-based rank in the served list, 0 when the item was not in it
    predicted: float | None  # the attributed variant's rating of the item


def _served_from(fragment: bytes) -> tuple[list[str], list[float]]:
    items = orjson.loads(b"{" + fragment + b"}")["items"]
    return [str(i["item_id"]) for i in items], [float(i["rating"]) for i in items]


class FeedbackLoop:
    def __init__(
        self,
        *,
        settings: Settings,
        metrics: Metrics,
        store: LoopStore,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.shadow = shadow
        self._shadow_share = settings.shadow_percent / 100.0

    # -- /recommend -------------------------------------------------------------------

    async def fresh_state(self, user: str, state: ServingState) -> FreshState | None:
        items = await self.store.fresh_items(user)
        if not items:
            return None
        positions = [p - 1 for p in (state.item_position(i) for i in items) if p is not None]
        digest = hashlib.blake2b("\x1f".join(sorted(items)).encode(), digest_size=6).hexdigest()
        return FreshState(positions=np.array(positions, dtype=np.int64), key_suffix=f":f{digest}")

    async def after_recommend(
        self,
        hook: RecommendHook,
        request_id: str,
        *,
        variant: str,
        fragment: bytes,
        cached: bool,
    ) -> str:
        """Records the impression and gives its id: `request_id`, or a new one when that
        names another list, another user's or this user's with other items (a client or
        proxy reusing its trace id); may queue shadow work. Never raises for Redis."""
        state, fresh, known_user = hook.state, hook.fresh, hook.known_user
        user, k, exclude_seen = hook.user, hook.k, hook.exclude_seen
        items, ratings = _served_from(fragment)
        record = functools.partial(
            self.store.record_impression,
            user=user,
            variant=variant,
            version=state.version,
            items=items,
            ratings=ratings,
        )
        recorded = await record(request_id=request_id)
        if recorded is not None and recorded[0] == "taken":
            request_id = uuid.uuid4().hex
            recorded = await record(request_id=request_id)
        if recorded is None:
            self.metrics.impression_write_errors_total.inc()
            return request_id
        outcome, experiment = recorded
        if outcome == "new":
            self.metrics.recommendation_impressions_total.labels(variant=variant).inc()
        shadow = self.shadow
        if (
            shadow is not None
            and not cached
            and known_user is not None
            and random.random() < self._shadow_share
        ):
            shadow.submit(
                ShadowJob(
                    state=state,
                    experiment=experiment,
                    served_variant=variant,
                    user=known_user,
                    k=k,
                    exclude_seen=exclude_seen,
                    extra_exclude=fresh.positions if fresh is not None else None,
                    served_items=items,
                    served_ratings=ratings,
                )
            )
        return request_id

    # -- /feedback --------------------------------------------------------------------

    def check(self, events: Sequence[FeedbackEvent], state: ServingState) -> None:
        """Refuses what no Redis lookup is needed to refuse: scale, catalogue."""
        # The data set's scale, from the bundle (contract.ratings), as training saw it.
        low, high = state.bundle.rating_scale
        for i, event in enumerate(events):
            if event.event == "rating" and (event.value is None or not low <= event.value <= high):
                raise FeedbackRejectedError(
                    f"events.{i}.value",
                    f"a rating needs a value in [{low:g}, {high:g}], got {event.value}",
                )
            if state.item_position(event.item_id) is None:
                raise FeedbackRejectedError(
                    f"events.{i}.item_id", f"unknown item_id {event.item_id!r}"
                )

    async def accept(self, events: Sequence[FeedbackEvent], state: ServingState) -> int:
        """Attributes and writes `events` (all or none); raises FeedbackRejectedError or
        StoreUnavailableError. Returns how many were written."""
        self.check(events, state)
        impressions = await self.store.resolve([(e.request_id or "", e.user_id) for e in events])
        for i, (event, impression) in enumerate(zip(events, impressions, strict=True)):
            if event.request_id is None:
                continue
            if impression is None:
                raise FeedbackRejectedError(
                    f"events.{i}.request_id",
                    f"unknown or expired request_id {event.request_id!r} (impressions are "
                    f"kept {self.settings.impression_ttl_seconds} s)",
                )
            if impression.user != event.user_id:
                raise FeedbackRejectedError(
                    f"events.{i}.request_id",
                    f"request_id {event.request_id!r} was served to another user",
                )
        attributions, to_predict = self._attribute(events, impressions, state)
        if to_predict:  # a model run blocks: off the event loop
            await anyio.to_thread.run_sync(self._predict, state, events, attributions, to_predict)
        now = time.time()
        document = {
            "maxlen": self.settings.feedback_stream_maxlen,
            "ttl": self.settings.impression_ttl_seconds,
            "fresh_ttl": self.settings.fresh_state_ttl_seconds,
            "fresh_max": self.settings.fresh_state_max_items,
            "events": [
                self._entry(event, attribution, now)
                for event, attribution in zip(events, attributions, strict=True)
            ],
        }
        written = await self.store.write_events(document)
        self._count(events, attributions, written)
        return len(written)

    def _attribute(
        self,
        events: Sequence[FeedbackEvent],
        impressions: Sequence[StoredImpression | None],
        state: ServingState,
    ) -> tuple[list[Attribution], list[int]]:
        """Where each item was served and, for a rating of a served item, the rating the
        user was shown; plus the events whose rating the model must give (not served,
        same bundle), which `_predict` fills in."""
        found: list[Attribution] = []
        to_predict: list[int] = []
        for n, (event, impression) in enumerate(zip(events, impressions, strict=True)):
            if impression is None:
                found.append(Attribution(None, 0, None))
                continue
            try:
                position = impression.items.index(event.item_id) + 1
            except ValueError:
                position = 0
            predicted: float | None = None
            if event.event == "rating":
                if position:
                    predicted = impression.ratings[position - 1]
                elif impression.version == state.version:
                    to_predict.append(n)
            found.append(Attribution(impression, position, predicted))
        return found, to_predict

    @staticmethod
    def _predict(
        state: ServingState,
        events: Sequence[FeedbackEvent],
        found: list[Attribution],
        to_predict: list[int],
    ) -> None:
        """The attributed variant's ratings of the listed events' items: one run per variant."""
        by_variant: dict[str, list[tuple[int, StoredImpression]]] = {}
        for n in to_predict:
            impression = found[n].impression
            if impression is not None:
                by_variant.setdefault(impression.variant, []).append((n, impression))
        for variant, rows in by_variant.items():
            users = [state.user_position(imp.user) or 0 for _, imp in rows]
            items = [state.item_position(events[n].item_id) or 0 for n, _ in rows]
            ratings = state.predict(
                variant,
                users=np.array(users, dtype=np.int64),
                items=np.array(items, dtype=np.int64),
            )
            for (n, imp), rating in zip(rows, ratings.tolist(), strict=True):
                found[n] = Attribution(imp, found[n].position, round(rating, 4))

    def _entry(self, event: FeedbackEvent, attribution: Attribution, now: float) -> dict[str, Any]:
        impression = attribution.impression
        value = "" if event.value is None else repr(float(event.value))
        timestamp = event.timestamp.timestamp() if event.timestamp is not None else now
        positive = event.event in ("click", "purchase") or (
            event.event == "rating"
            and event.value is not None
            and event.value >= self.settings.positive_rating_threshold
        )
        fields = {
            "user_id": event.user_id,
            "item_id": event.item_id,
            "event": event.event,
            "value": value,
            "request_id": event.request_id or "",
            "timestamp": f"{timestamp:.3f}",
            "received_at": f"{now:.3f}",
            "attributed_request_id": impression.request_id if impression else "",
            "variant": impression.variant if impression else "",
            "position": str(attribution.position),
            "model_version": impression.version if impression else "",
            "experiment": impression.experiment if impression else "",
        }
        predicted = attribution.predicted
        return {
            "fields": [part for pair in fields.items() for part in pair],
            "exp": impression.experiment if impression else "",
            "variant": impression.variant if impression else "",
            "rid": impression.request_id if impression else "",
            "item": event.item_id,
            "user": event.user_id,
            "event": event.event,
            "hit": int(positive and attribution.position > 0),
            "err": None
            if predicted is None or event.value is None
            else abs(predicted - float(event.value)),
            "fresh": int(event.event in FRESH_EVENTS),
            "now_ms": int(now * 1000),
        }

    def _count(
        self,
        events: Sequence[FeedbackEvent],
        attributions: Sequence[Attribution],
        written: Sequence[Written],
    ) -> None:
        metrics = self.metrics
        for event, attribution, added in zip(events, attributions, written, strict=True):
            impression = attribution.impression
            variant = impression.variant if impression else "none"
            metrics.feedback_events_total.labels(variant=variant, event=event.event).inc()
            if added.new_list_hit:
                metrics.recommendation_lists_hit_total.labels(variant=variant).inc()
            if added.new_hit:
                metrics.recommendation_hits_total.labels(variant=variant).inc()
                metrics.recommendation_hit_position.labels(variant=variant).observe(
                    attribution.position
                )
            if added.new_rating and attribution.predicted is not None and event.value is not None:
                metrics.online_rating_abs_error.labels(variant=variant).observe(
                    abs(attribution.predicted - event.value)
                )

    # -- readout ----------------------------------------------------------------------

    async def readout(self) -> dict[str, Any]:
        settings = self.settings
        experiment, started = await self.store.experiment()
        counts = await self.store.counts(experiment)
        look = stats.msprt_difference(
            int(counts.get("hit_lists:student", 0)),
            int(counts.get("impressions:student", 0)),
            int(counts.get("hit_lists:teacher", 0)),
            int(counts.get("impressions:teacher", 0)),
            tau=settings.experiment_mixture_sd,
        )
        running = await self.store.running_test(experiment, look)
        return {
            "experiment": {
                "id": experiment,
                "started_at": datetime.fromtimestamp(started, tz=UTC).isoformat(),
                "positive_rating_threshold": settings.positive_rating_threshold,
            },
            "variants": {v: stats.variant_readout(counts, v) for v in stats.VARIANTS},
            "difference": stats.difference_readout(
                counts,
                running=running,
                look=look,
                tau=settings.experiment_mixture_sd,
                margin=settings.experiment_margin,
            ),
            "shadow": stats.shadow_readout(counts, percent=settings.shadow_percent),
        }

    async def reset(self) -> dict[str, Any]:
        new, previous = await self.store.reset()
        logger.info("experiment reset", extra={"experiment": new, "previous": previous})
        return {"experiment": new, "previous": previous}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.warm(self.settings.redis_warm_connections)
        if self.shadow is not None:
            self.shadow.start()

    async def aclose(self) -> None:
        if self.shadow is not None:
            await anyio.to_thread.run_sync(self.shadow.close)
        await self.store.aclose()


@dataclass
class RecommendHook:
    """One /recommend request's part in the loop; does nothing without a loop."""

    loop: FeedbackLoop | None
    user: str
    state: ServingState
    known_user: int | None  # bundle index of a known user
    k: int
    exclude_seen: bool
    fresh: FreshState | None = None

    @property
    def key_suffix(self) -> str:
        return self.fresh.key_suffix if self.fresh is not None else ""

    @property
    def exclude(self) -> dict[str, Any]:
        """Keyword arguments of ServingState.recommend_known for the fresh state."""
        return {"extra_exclude": self.fresh.positions} if self.fresh is not None else {}

    async def served(self, request_id: str, *, variant: str, fragment: bytes, cached: bool) -> str:
        """The id the answer gives for POST /feedback (see FeedbackLoop.after_recommend)."""
        if self.loop is None:
            return request_id
        return await self.loop.after_recommend(
            self, request_id, variant=variant, fragment=fragment, cached=cached
        )


async def recommend_hook(
    loop: FeedbackLoop | None,
    user: str,
    state: ServingState,
    *,
    known: int | None,
    k: int,
    exclude_seen: bool,
) -> RecommendHook:
    """Reads the user's fresh interactions (known users whose seen items are excluded)."""
    hook = RecommendHook(loop, user, state, known, k, exclude_seen)
    if loop is not None and known is not None and exclude_seen:
        hook.fresh = await loop.fresh_state(user, state)
    return hook


def loop_enabled(settings: Settings) -> bool:
    """Whether the settings give a loop: Redis and FEEDBACK_ENABLED."""
    return bool(settings.feedback_redis_url or settings.redis_url) and settings.feedback_enabled


def build_loop(settings: Settings, metrics: Metrics) -> FeedbackLoop | None:
    """The loop, or None without Redis or with FEEDBACK_ENABLED off."""
    url = settings.feedback_redis_url or settings.redis_url
    if not loop_enabled(settings):
        return None
    store = LoopStore(
        url,
        fast_timeout=settings.redis_socket_timeout_seconds,
        durable_timeout=settings.feedback_redis_timeout_seconds,
        connect_timeout=settings.redis_connect_timeout_seconds,
        breaker_threshold=settings.breaker_failure_threshold,
        breaker_reset_seconds=settings.breaker_reset_seconds,
        impression_ttl_seconds=settings.impression_ttl_seconds,
    )
    shadow = None
    if settings.shadow_percent > 0:
        shadow = ShadowScorer(
            queue_size=settings.shadow_queue_size,
            metrics=metrics,
            sink=RedisShadowSink(url, timeout=settings.feedback_redis_timeout_seconds),
        )
    return FeedbackLoop(settings=settings, metrics=metrics, store=store, shadow=shadow)
