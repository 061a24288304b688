"""App factory and lifespan; `uvicorn app.main:app` serves the module-level app.

Importing this module builds the FastAPI object only: no settings are read, no client
made, no file opened. The lifespan reads Settings (unless create_app was given them),
builds metrics, cache, router and services, puts them on app.state, and loads the bundle;
at request time handlers receive them through the dependencies of app/api/deps.py, route
gates and middleware through `app.services.services_of`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio.to_thread
import orjson
from fastapi import FastAPI

from app.api import admin, bench, experiment, feedback, health, predict, recommend
from app.api.gate import hide_closed_routes
from app.config import Settings
from app.errors import install_error_handlers
from app.feedback import FeedbackLoop, build_loop
from app.limits import RequestLimitsMiddleware
from app.logging_setup import configure_logging
from app.middleware import RequestContextMiddleware
from app.services import attach, build_services, detach
from app.startup import load_settings, require_bundle
from app.state import ServingState
from app.sync import BackgroundSync

logger = logging.getLogger(__name__)


def _floor_bodies(state: ServingState) -> dict[int, bytes]:
    """Bodies shaped like /recommend answers for n = 1..100, from real titles."""
    bundle = state.bundle
    positions = list(range(min(100, bundle.n_items)))
    bodies: dict[int, bytes] = {}
    for n in range(1, 101):
        items = [
            {
                "item_id": bundle.item_ids[p],
                "title": bundle.titles[p],
                "score": round(1.0 - i / 100, 4),
                "rating": 3.5,
            }
            for i, p in enumerate(positions[:n])
        ]
        bodies[n] = orjson.dumps(
            {
                "request_id": "0" * 32,  # as long as a generated one
                "user_id": bundle.user_ids[0] if bundle.user_ids else "0",
                "variant": "teacher",
                "model_version": state.version,
                "items": items,
                "cached": False,
                "fallback": None,
            }
        )
    return bodies


def make_lifespan(
    settings: Settings | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The lifespan; with `settings` None it reads them from the environment on start."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Invalid settings and a missing bundle stop the start with one line (app/startup.py).
        config = settings if settings is not None else load_settings()
        configure_logging(config.log_level)
        require_bundle(config.model_dir)
        services = build_services(config)
        attach(app.state, services)
        sync: BackgroundSync | None = None
        loop: FeedbackLoop | None = None
        try:
            # Loading hashes files and warms sessions: seconds of blocking work, kept off
            # the loop. A bundle that fails verification raises here, so the server never
            # starts serving it.
            state = await anyio.to_thread.run_sync(services.load)
            if config.bench_floor_enabled:
                services.floor_bodies = _floor_bodies(state)
            if services.routing_sync is not None:
                # Adopt a split an admin already shared, so a new worker routes like the others.
                await anyio.to_thread.run_sync(services.routing_sync.refresh)
            sync = BackgroundSync(
                services,
                routing=services.routing_sync,
                routing_every=config.routing_sync_seconds,
                model_every=config.model_watch_seconds,
            )
            sync.start()
            # The closed loop (impressions, /feedback, readout, shadow): with Redis only.
            loop = app.state.loop = build_loop(config, services.metrics)
            if loop is not None:
                await loop.start()
            logger.info(
                "service ready",
                extra={"version": state.version, "cache": services.cache.backend.name},
            )
            yield
        finally:
            if sync is not None:
                await anyio.to_thread.run_sync(sync.stop)
            if loop is not None:
                await loop.aclose()
            if hasattr(app.state, "loop"):
                del app.state.loop
            detach(app.state)
            services.cache.close()

    return lifespan


class ServiceApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        # Admin and bench routes are always mounted but closed without their setting;
        # the schema lists only what answers.
        return hide_closed_routes(
            self,
            super().openapi(),
            [
                *admin.router.routes,
                *experiment.router.routes,
                *feedback.router.routes,
                *bench.router.routes,
            ],
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; `settings` None means read from the environment when the lifespan starts."""
    app = ServiceApp(
        title="recsys-distill",
        summary="Teacher and distilled student recommenders behind a sticky A/B split.",
        lifespan=make_lifespan(settings),
        # No `/recommend/` -> `/recommend` redirects: they echo the client's Host header.
        redirect_slashes=False,
    )
    app.include_router(recommend.router)
    app.include_router(predict.router)
    app.include_router(health.router)
    app.include_router(feedback.router)
    # Present only with ADMIN_TOKEN / BENCH_FLOOR_ENABLED: their routes check at request
    # time (app/api/gate.py) and otherwise answer exactly like an unknown path.
    app.include_router(admin.router)
    app.include_router(experiment.router)
    app.include_router(bench.router)
    install_error_handlers(app)
    # Added first, so it runs inside the request context: its refusals carry the request id.
    app.add_middleware(RequestLimitsMiddleware, state=app.state)
    app.add_middleware(RequestContextMiddleware, state=app.state)
    return app


app = create_app()
