"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import get_services
from app.responses import JSONBytesResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return JSONBytesResponse({"status": "ok"})


@router.get("/readyz")
def readyz(request: Request) -> Response:
    """Ready once a bundle serves; the cache is reported but never makes the service unready,
    because requests are answered without it."""
    services = get_services(request)
    state = services.holder.current
    cache = {"backend": services.cache.backend.name, "status": services.cache.status()}
    if state is None:
        return JSONBytesResponse({"status": "loading", "cache": cache}, status_code=503)
    return JSONBytesResponse(
        {
            "status": "ready",
            "model_version": state.version,
            "variants": {
                variant: {"file": runner.file, "provider": runner.provider}
                for variant, runner in state.runners.items()
            },
            "cache": cache,
        }
    )


@router.get("/metrics")
def metrics(request: Request) -> Response:
    body, content_type = get_services(request).metrics.render()
    return Response(body, media_type=content_type)
