"""POST /feedback: one event or a batch, appended to the event log before the answer.

Present only with the closed loop (Redis and FEEDBACK_ENABLED); otherwise the path answers
like an unknown one, as the other setting-gated routes do (app/api/gate.py).

202 {"accepted": n} means every event is in the Redis stream. When Redis cannot take them
the answer is 503 with Retry-After and nothing is acknowledged; a bad event is a 4xx that
names its field, and then no event of the request is written.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal, Self

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.responses import Response

from app.api.deps import RequiredLoop, SettingsDep, StateDep
from app.api.gate import GatedRoute
from app.config import Settings
from app.feedback import FeedbackEvent, FeedbackLoop, FeedbackRejectedError, loop_enabled
from app.loop_store import StoreUnavailableError
from app.responses import JSONBytesResponse
from app.schemas import ErrorBody, RawId


class LoopRoute(GatedRoute):
    """Answers like an unknown path (404) without the closed loop."""

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return loop_enabled(settings)


router = APIRouter(route_class=LoopRoute)

EventName = Literal["click", "rating", "purchase", "dismiss"]
# Refused before parsing into objects; FEEDBACK_BATCH_LIMIT is checked in the handler.
EVENTS_HARD_LIMIT = 10_000
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class FeedbackEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: RawId
    item_id: RawId
    event: EventName
    value: float | None = Field(default=None, description="the rating for a rating event")
    request_id: RequestId | None = Field(
        default=None, description="the /recommend request that served the item"
    )
    timestamp: datetime | None = Field(
        default=None, description="when it happened (unix seconds or ISO 8601); default now"
    )

    _check_value = field_validator("value")(_finite)

    def to_event(self) -> FeedbackEvent:
        return FeedbackEvent(
            user_id=self.user_id,
            item_id=self.item_id,
            event=self.event,
            value=self.value,
            request_id=self.request_id,
            timestamp=self.timestamp,
        )


class FeedbackRequest(BaseModel):
    """One event (its fields at the top level) or `events`, a batch, never both."""

    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEventIn] | None = Field(
        default=None, min_length=1, max_length=EVENTS_HARD_LIMIT
    )
    user_id: RawId | None = None
    item_id: RawId | None = None
    event: EventName | None = None
    value: float | None = None
    request_id: RequestId | None = None
    timestamp: datetime | None = None

    _check_value = field_validator("value")(_finite)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        single = [self.user_id, self.item_id, self.event, self.value, self.request_id]
        if self.events is not None and any(v is not None for v in single):
            raise ValueError("give either one event or events, not both")
        if self.events is None:
            missing = [
                name
                for name, v in (("user_id", self.user_id), ("item_id", self.item_id),
                                ("event", self.event))
                if v is None
            ]  # fmt: skip
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or give a list of events)")
        return self

    def to_events(self) -> list[FeedbackEvent]:
        if self.events is not None:
            return [event.to_event() for event in self.events]
        assert self.user_id is not None and self.item_id is not None and self.event is not None
        return [
            FeedbackEvent(
                user_id=self.user_id,
                item_id=self.item_id,
                event=self.event,
                value=self.value,
                request_id=self.request_id,
                timestamp=self.timestamp,
            )
        ]


class Accepted(BaseModel):
    accepted: int


def unavailable(loop: FeedbackLoop, what: str, exc: Exception) -> HTTPException:
    """503 with Retry-After: the client should send the same request again later."""
    return HTTPException(
        status_code=503,
        detail=f"{what}: the event store (Redis) is unavailable ({exc}); retry later",
        headers={"Retry-After": str(loop.store.retry_after_seconds)},
    )


@router.post(
    "/feedback",
    status_code=202,
    response_model=Accepted,
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def feedback(
    body: FeedbackRequest, loop: RequiredLoop, state: StateDep, settings: SettingsDep
) -> Response:
    """Record user feedback on recommended (or any known) items."""
    events = body.to_events()
    limit = settings.feedback_batch_limit
    if len(events) > limit:
        raise HTTPException(
            status_code=422,
            detail=f"events: {len(events)} given, at most {limit} per request",
        )
    try:
        accepted = await loop.accept(events, state)
    except FeedbackRejectedError as exc:
        # The single form has no `events`: name its fields as they were sent.
        detail = str(exc) if body.events is not None else str(exc).removeprefix("events.0.")
        raise HTTPException(status_code=422, detail=detail) from exc
    except StoreUnavailableError as exc:
        loop.metrics.feedback_write_errors_total.inc()
        raise unavailable(loop, "feedback not recorded", exc) from exc
    return JSONBytesResponse({"accepted": accepted}, status_code=202)
