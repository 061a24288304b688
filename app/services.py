"""The per-app objects handlers need, built once per lifespan and kept on app.state.

Routes reach them through the dependencies in app/api/deps.py; the route gates and the
middleware, which run outside dependency injection, through `services_of`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.admission import AdmissionGate
from app.cache import RecommendationCache, RedisCache, build_cache
from app.config import Settings
from app.fragment_check import clean_fragment
from app.metrics import Metrics
from app.routing import ABRouter, RoutingSync
from app.state import ServingState, load_state

logger = logging.getLogger(__name__)
# The one attribute of app.state the lifespan fills.
_ATTRIBUTE = "services"


class NotReadyError(Exception):
    """No bundle is loaded yet."""


class ReloadInProgressError(Exception):
    """Another reload holds the lock."""


@dataclass
class StateHolder:
    """Holds the current ServingState; replacing the reference is the atomic swap."""

    current: ServingState | None = None
    reload_lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> ServingState:
        state = self.current
        if state is None:
            raise NotReadyError("no model bundle loaded")
        return state


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    router: ABRouter
    cache: RecommendationCache
    admission: AdmissionGate
    holder: StateHolder = field(default_factory=StateHolder)
    routing_sync: RoutingSync | None = None
    floor_bodies: dict[int, bytes] = field(default_factory=dict)

    def load(self, model_dir: str | None = None) -> ServingState:
        """Load a bundle, verify and warm it up, then swap it in; the old one serves until then.

        Raises BundleError or ModelLoadError (old state kept) or ReloadInProgressError.
        """
        if not self.holder.reload_lock.acquire(blocking=False):
            raise ReloadInProgressError("a reload is already in progress")
        try:
            settings = self.settings
            state = load_state(
                settings.model_dir if model_dir is None else Path(model_dir),
                metrics=self.metrics,
                providers=settings.provider_list,
                intra_op_threads=settings.ort_intra_op_threads,
                student_model=settings.student_model,
                retrieval=settings.retrieval_settings,
                rating_factors_mb=settings.rating_factors_mb,
                inline_max_ms=settings.inline_max_ms,
            )
            previous = self.holder.current
            self.holder.current = state
            self.metrics.set_model_info(
                [
                    (variant, state.version, runner.provider)
                    for variant, runner in state.runners.items()
                ]
            )
            logger.info(
                "bundle serving",
                extra={
                    "version": state.version,
                    "previous": previous.version if previous else None,
                    "providers": {v: r.provider for v, r in state.runners.items()},
                    "student_file": state.runners["student"].file,
                },
            )
            return state
        finally:
            self.holder.reload_lock.release()


def build_services(settings: Settings) -> Services:
    """Metrics, cache (a Redis client when REDIS_URL is set), A/B router, admission gate."""
    metrics = Metrics()
    services = Services(
        settings=settings,
        metrics=metrics,
        router=ABRouter(student_percent=settings.ab_student_percent, salt=settings.ab_salt),
        cache=build_cache(
            redis_url=settings.redis_url,
            ttl_seconds=settings.cache_ttl_seconds,
            max_entries=settings.cache_max_entries,
            socket_timeout=settings.redis_socket_timeout_seconds,
            breaker_threshold=settings.breaker_failure_threshold,
            breaker_reset_seconds=settings.breaker_reset_seconds,
            metrics=metrics,
            local_ttl_seconds=settings.cache_local_ttl_seconds,
            redis_password=(
                settings.redis_password.get_secret_value() if settings.redis_password else None
            ),
            check=clean_fragment,
        ),
        admission=AdmissionGate(
            slots=settings.inference_concurrency,
            queue_max=settings.inference_queue_max,
            wait_seconds=settings.inference_queue_seconds,
            rejected=metrics.inference_rejected_total,
        ),
    )
    backend = services.cache.backend
    store = backend if isinstance(backend, RedisCache) else None
    if store is not None or settings.routing_file is not None:
        services.routing_sync = RoutingSync(services.router, store, path=settings.routing_file)
    return services


def attach(app_state: Any, services: Services) -> None:
    """Put `services` on an app's state (starlette's State), where requests find them."""
    setattr(app_state, _ATTRIBUTE, services)


def detach(app_state: Any) -> None:
    delattr(app_state, _ATTRIBUTE)


def services_of(app_state: Any) -> Services | None:
    """The services on an app's state; None before the lifespan has run or after it ended."""
    services: Services | None = getattr(app_state, _ATTRIBUTE, None)
    return services
