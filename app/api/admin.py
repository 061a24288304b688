"""Admin routes (present only when ADMIN_TOKEN is set): routing split and bundle reload."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from app.api.deps import HolderDep, RouterDep, RoutingSyncDep, ServicesDep, SettingsDep
from app.api.gate import GatedRoute
from app.bundle import BundleError
from app.config import Settings
from app.inference import ModelLoadError
from app.responses import JSONBytesResponse
from app.schemas import ErrorBody, ReloadRequest, RoutingChange, RoutingUpdate, RoutingView
from app.services import ReloadInProgressError

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)


class AdminRoute(GatedRoute):
    """Answers like an unknown path (404) unless ADMIN_TOKEN is set."""

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return settings.admin_token is not None


async def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = settings.admin_token
    if token is None:  # AdminRoute already answers 404 then; kept as a second lock
        raise HTTPException(status_code=404, detail="Not Found")
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status_code=401,
            detail="missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Constant-time comparison: the time taken must not tell how much of a guess was right.
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(status_code=403, detail="invalid admin token")


router = APIRouter(
    prefix="/admin",
    route_class=AdminRoute,
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("/routing", response_model=RoutingView)
def get_routing(ab_router: RouterDep) -> Response:
    config = ab_router.config
    return JSONBytesResponse({"student_percent": config.student_percent, "salt": config.salt})


@router.put("/routing", response_model=RoutingChange)
def put_routing(
    update: RoutingUpdate, ab_router: RouterDep, routing_sync: RoutingSyncDep
) -> Response:
    """Change the split; `shared` says whether the other workers got it through Redis
    (false without Redis, or when Redis is down: then only this worker changed)."""
    config = ab_router.update(student_percent=update.student_percent, salt=update.salt)
    shared = routing_sync.publish(config) if routing_sync is not None else False
    logger.info(
        "routing changed", extra={"student_percent": config.student_percent, "shared": shared}
    )
    return JSONBytesResponse(
        {"student_percent": config.student_percent, "salt": config.salt, "shared": shared}
    )


@router.post("/reload", responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def reload_bundle(
    services: ServicesDep, holder: HolderDep, body: ReloadRequest | None = None
) -> Response:
    """Load, verify and warm up a bundle, then swap it in; on failure the old one keeps
    serving and the answer says why."""
    previous = holder.current
    try:
        state = services.load(body.model_dir if body is not None else None)
    except ReloadInProgressError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except (BundleError, ModelLoadError) as exc:
        logger.warning("reload refused", extra={"reason": str(exc)})
        raise HTTPException(status_code=422, detail=f"reload failed: {exc}") from exc
    except Exception as exc:
        # Whatever went wrong, the old bundle still serves; say so instead of a bare 500.
        logger.exception("reload failed unexpectedly")
        raise HTTPException(
            status_code=422, detail=f"reload failed: {type(exc).__name__}: {exc}"
        ) from exc
    return JSONBytesResponse(
        {
            "status": "reloaded",
            "model_version": state.version,
            "previous_version": previous.version if previous is not None else None,
            "variants": {
                v: {"file": r.file, "provider": r.provider} for v, r in state.runners.items()
            },
        }
    )
