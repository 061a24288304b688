"""GET /admin/experiment (the readout) and PUT /admin/experiment/reset, behind ADMIN_TOKEN
and present only with the closed loop (Redis and FEEDBACK_ENABLED).

The readout comes from the fleet-wide counts in Redis, so every worker and replica gives
the same answer; docs/experiment.md explains its fields and the sequential test.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from app.api.admin import AdminRoute, require_admin
from app.api.deps import RequiredLoop
from app.api.feedback import unavailable
from app.config import Settings
from app.feedback import loop_enabled
from app.loop_store import StoreUnavailableError
from app.responses import JSONBytesResponse
from app.schemas import ErrorBody


class ExperimentRoute(AdminRoute):
    """Answers like an unknown path (404) without ADMIN_TOKEN or without the loop."""

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return AdminRoute.enabled(settings) and loop_enabled(settings)


router = APIRouter(
    prefix="/admin",
    route_class=ExperimentRoute,
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)


@router.get("/experiment")
async def get_experiment(loop: RequiredLoop) -> Response:
    """Per variant: impressions, feedback, hits, hit rate with a 95% interval, online MAE;
    the student-minus-teacher difference with an always-valid p-value; shadow agreement."""
    try:
        return JSONBytesResponse(await loop.readout())
    except StoreUnavailableError as exc:
        raise unavailable(loop, "readout unavailable", exc) from exc


@router.put("/experiment/reset")
async def reset_experiment(loop: RequiredLoop) -> Response:
    """Starts a new experiment: counts start from zero under a new id (the old ones are
    kept 30 days); the event log is not touched."""
    try:
        return JSONBytesResponse(await loop.reset())
    except StoreUnavailableError as exc:
        raise unavailable(loop, "experiment not reset", exc) from exc
