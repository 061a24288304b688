"""Liveness, readiness and the Prometheus scrape endpoint.

They answer HEAD too (the GET answer's status and headers, no body), for load balancers and
monitors that probe with it. They are the only GET routes that do: a HEAD /recommend would
record an impression nobody saw. The HEAD routes stay out of the OpenAPI schema, which
would otherwise list each operation twice under one id.
"""

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


for _path, _endpoint in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
