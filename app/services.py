"""The per-app objects handlers need, built once by the app factory."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.admission import AdmissionGate
from app.cache import RecommendationCache
from app.config import Settings
from app.metrics import Metrics
from app.routing import ABRouter, RoutingSync
from app.state import ServingState, load_state

logger = logging.getLogger(__name__)


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
