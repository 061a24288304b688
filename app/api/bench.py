"""GET /_bench/floor: the framework floor for benchmarks (only with BENCH_FLOOR_ENABLED).

Returns a body shaped and sized like a /recommend answer, precomputed at start-up, so
that the difference to /recommend is the cost of the real work.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from starlette.responses import Response

from app.api.deps import FloorBodiesDep
from app.api.gate import GatedRoute
from app.config import Settings
from app.responses import JSONBytesResponse


class BenchRoute(GatedRoute):
    """Answers like an unknown path (404) unless BENCH_FLOOR_ENABLED is set."""

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return settings.bench_floor_enabled


router = APIRouter(include_in_schema=False, route_class=BenchRoute)


@router.get("/_bench/floor")
async def floor(bodies: FloorBodiesDep, n: Annotated[int, Query(ge=1, le=100)] = 10) -> Response:
    body = bodies.get(n)
    if body is None:
        raise HTTPException(status_code=503, detail="floor bodies not built yet")
    return JSONBytesResponse(body)
