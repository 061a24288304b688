"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import CacheDep, HolderDep, MetricsDep
from app.responses import JSONBytesResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return JSONBytesResponse({"status": "ok"})


@router.get("/readyz")
def readyz(holder: HolderDep, cache: CacheDep) -> Response:
    """Ready once a bundle serves; the cache is reported but never makes the service unready,
    because requests are answered without it."""
    state = holder.current
    cache_view = {"backend": cache.backend.name, "status": cache.status()}
    if state is None:
        return JSONBytesResponse({"status": "loading", "cache": cache_view}, status_code=503)
    return JSONBytesResponse(
        {
            "status": "ready",
            "model_version": state.version,
            "variants": {
                variant: {"file": runner.file, "provider": runner.provider}
                for variant, runner in state.runners.items()
            },
            "cache": cache_view,
        }
    )


@router.get("/metrics")
def metrics(registry: MetricsDep) -> Response:
    body, content_type = registry.render()
    return Response(body, media_type=content_type)
