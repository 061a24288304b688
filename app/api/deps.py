"""Dependencies shared by the routes: services, the current bundle, the variant."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Header, HTTPException, Request

from app.services import NotReadyError, Services
from app.state import ServingState

VariantOverride = Annotated[
    Literal["teacher", "student"] | None,
    Header(alias="X-Variant", description="force a variant instead of the sticky A/B split"),
]


def get_services(request: Request) -> Services:
    """The services the lifespan built and put on app.state (503 before it has run)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(status_code=503, detail="service not started")
    return services


def get_state(services: Services) -> ServingState:
    """The bundle for this whole request: one reference, taken once."""
    try:
        return services.holder.get()
    except NotReadyError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc


def choose_variant(
    request: Request, services: Services, *, user_id: str, override: str | None
) -> str:
    if override is not None:
        variant = override
    else:
        variant = services.router.assign(user_id)
        services.metrics.ab_assignments_total.labels(variant=variant).inc()
    # Read by the HTTP metrics middleware to label the request.
    request.state.variant = variant
    return variant
