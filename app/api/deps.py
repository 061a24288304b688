"""What the routes declare as dependencies: `Annotated[T, Depends(getter)]` aliases.

Everything comes from the `Services` the lifespan put on app.state; nothing here is built at
import or per request beyond reading attributes. A route names what it uses (`StateDep`,
`CacheDep`, ...) and FastAPI resolves it for that request. Before the lifespan has run
every one answers 503; FastAPI resolves dependencies before it validates the route's own
parameters, so then a malformed request also gets the 503 (no served app is ever in that
state: the server accepts connections only after the lifespan has started).

Two choices keep the cached /recommend path, benchmarked against a bare framework floor,
as cheap as it was:
* the getters are `async def`: FastAPI runs a plain `def` dependency in a worker thread,
  a thread hop per dependency, and these only read attributes;
* each getter reads app.state itself rather than depending on `ServicesDep`: every link of
  a dependency chain is one more resolution (about 10 µs each in FastAPI 0.165);
* the scoring routes take what they use as one `ScoringDep`, for the same reason: one
  resolution per request where /recommend had five.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Header, HTTPException, Request

from app.admission import AdmissionGate
from app.cache import RecommendationCache
from app.config import Settings
from app.feedback import FeedbackLoop
from app.metrics import Metrics
from app.routing import ABRouter, RoutingSync
from app.services import NotReadyError, Services, StateHolder, services_of
from app.state import ServingState

VariantOverride = Annotated[
    Literal["teacher", "student"] | None,
    Header(alias="X-Variant", description="force a variant instead of the sticky A/B split"),
]


def _services(request: Request) -> Services:
    """The services the lifespan built (503 before it has run or after it has ended)."""
    services = services_of(request.app.state)
    if services is None:
        raise HTTPException(status_code=503, detail="service not started")
    return services


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_settings(request: Request) -> Settings:
    return _services(request).settings


async def get_metrics(request: Request) -> Metrics:
    return _services(request).metrics


async def get_router(request: Request) -> ABRouter:
    return _services(request).router


async def get_routing_sync(request: Request) -> RoutingSync | None:
    """The Redis publisher of the split; None without Redis."""
    return _services(request).routing_sync


async def get_cache(request: Request) -> RecommendationCache:
    return _services(request).cache


async def get_holder(request: Request) -> StateHolder:
    """The holder itself, for routes that must see "no bundle yet" or swap bundles."""
    return _services(request).holder


async def get_floor_bodies(request: Request) -> dict[int, bytes]:
    return _services(request).floor_bodies


def _state(services: Services) -> ServingState:
    """The bundle for this whole request: one reference, taken once, so a reload during
    the request cannot mix two bundles in one answer (503 while none is loaded)."""
    try:
        return services.holder.get()
    except NotReadyError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc


async def get_state(request: Request) -> ServingState:
    return _state(_services(request))


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RouterDep = Annotated[ABRouter, Depends(get_router)]
RoutingSyncDep = Annotated[RoutingSync | None, Depends(get_routing_sync)]
CacheDep = Annotated[RecommendationCache, Depends(get_cache)]
HolderDep = Annotated[StateHolder, Depends(get_holder)]
FloorBodiesDep = Annotated[dict[int, bytes], Depends(get_floor_bodies)]
StateDep = Annotated[ServingState, Depends(get_state)]


class VariantChooser:
    """Picks the variant of one request: the X-Variant override, else the sticky A/B split.

    Handlers call it once the request is known to be valid: choosing earlier would count
    an A/B assignment for a request that is then refused.
    """

    __slots__ = ("_metrics", "_request", "_router")

    def __init__(self, request: Request, router: ABRouter, metrics: Metrics) -> None:
        self._request = request
        self._router = router
        self._metrics = metrics

    def __call__(self, user_id: str, *, override: str | None) -> str:
        if override is not None:
            variant = override
        else:
            variant = self._router.assign(user_id)
            self._metrics.ab_assignments_total.labels(variant=variant).inc()
        # Read by the HTTP metrics middleware to label the request.
        self._request.state.variant = variant
        return variant


@dataclass(frozen=True, slots=True)
class Scoring:
    """What a scoring route (/recommend, /predict_rating) uses, resolved in one step."""

    state: ServingState
    settings: Settings
    cache: RecommendationCache
    admission: AdmissionGate
    loop: FeedbackLoop | None
    choose_variant: VariantChooser


async def get_scoring(request: Request) -> Scoring:
    """As `get_state` and the single getters above (503 before start or without a bundle)."""
    services = _services(request)
    return Scoring(
        state=_state(services),
        settings=services.settings,
        cache=services.cache,
        admission=services.admission,
        loop=getattr(request.app.state, "loop", None),
        choose_variant=VariantChooser(request, services.router, services.metrics),
    )


ScoringDep = Annotated[Scoring, Depends(get_scoring)]


async def get_loop(request: Request) -> FeedbackLoop | None:
    """The closed loop the lifespan built; None without Redis or with FEEDBACK_ENABLED off."""
    return getattr(request.app.state, "loop", None)


async def require_loop(loop: Annotated[FeedbackLoop | None, Depends(get_loop)]) -> FeedbackLoop:
    if loop is None:  # the route gate already answers 404 then; a second lock
        raise HTTPException(status_code=503, detail="the feedback loop is not running")
    return loop


RequiredLoop = Annotated[FeedbackLoop, Depends(require_loop)]
