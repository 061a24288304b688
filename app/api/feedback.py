"""POST /feedback: one event or a batch, appended to the event log before the answer.

Present only with the closed loop (Redis and FEEDBACK_ENABLED); otherwise the path answers
like an unknown one, as the other setting-gated routes do (app/api/gate.py).

202 {"accepted": n} means every event is in the Redis stream. When Redis cannot take them
the answer is 503 with Retry-After and nothing is acknowledged; a bad event is a 4xx that
names its field, and then no event of the request is written.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Self

from fastapi import APIRouter, HTTPException
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from starlette.responses import Response

from app.api.batch_limit import BatchLimitedRoute
from app.api.deps import RequiredLoop, StateDep
from app.api.gate import GatedRoute
from app.config import Settings
from app.feedback import FeedbackEvent, FeedbackLoop, FeedbackRejectedError, loop_enabled
from app.loop_store import StoreUnavailableError
from app.responses import JSONBytesResponse
from app.schemas import ErrorBody, JsonNumber, RawId


class LoopRoute(GatedRoute, BatchLimitedRoute):
    """Answers like an unknown path (404) without the closed loop."""

    batch_field = "events"

    @staticmethod
    def enabled(settings: Settings) -> bool:
        return loop_enabled(settings)

    @staticmethod
    def batch_limit(settings: Settings) -> int:
        return settings.feedback_batch_limit


logger = logging.getLogger(__name__)
router = APIRouter(route_class=LoopRoute)

EventName = Literal["click", "rating", "purchase", "dismiss"]
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


# Feedback says what happened, so not before the Unix epoch and not later than clock skew
# allows: a far-future rating would win every later merge of the exported log.
EARLIEST_EVENT = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_SKEW = timedelta(days=1)


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _out_of_range() -> ValueError:
    latest = datetime.now(UTC) + FUTURE_SKEW
    return ValueError(
        f"must lie between {EARLIEST_EVENT.isoformat()} and a day from now "
        f"({latest.isoformat(timespec='seconds')})"
    )


def _unix_seconds(value: object) -> object:
    """A number (or numeric string) as unix seconds, however large. pydantic reads one
    above 2e10 as milliseconds: a far-future time in seconds would land in 1973 instead of
    being refused."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value  # pydantic refuses or parses it
    try:
        seconds = float(value)
    except ValueError:
        return value  # ISO 8601, or not a time at all: pydantic's to say
    except OverflowError:  # an integer beyond any float
        raise _out_of_range() from None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise _out_of_range() from None


def _event_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A time without a zone is read as UTC, not as the server's local time.
    moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST_EVENT <= moment <= datetime.now(UTC) + FUTURE_SKEW:
        raise _out_of_range()
    return moment


EventValue = Annotated[
    JsonNumber | None, Field(description="the rating for a rating event (a JSON number)")
]
EventTime = Annotated[
    datetime | None,
    BeforeValidator(_unix_seconds),
    Field(
        description="when it happened (unix seconds or ISO 8601; no zone means UTC); default now"
    ),
]


class FeedbackEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: RawId
    item_id: RawId
    event: EventName
    value: EventValue = None
    request_id: RequestId | None = Field(
        default=None, description="the /recommend request that served the item"
    )
    timestamp: EventTime = None

    _check_value = field_validator("value")(_finite)
    _check_time = field_validator("timestamp")(_event_time)

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

    # At most FEEDBACK_BATCH_LIMIT, refused before validation (app/api/batch_limit.py).
    # fail_fast: reported by its first wrong event, as /predict_rating's pairs.
    events: list[FeedbackEventIn] | None = Field(default=None, min_length=1, fail_fast=True)
    user_id: RawId | None = None
    item_id: RawId | None = None
    event: EventName | None = None
    value: EventValue = None
    request_id: RequestId | None = None
    timestamp: EventTime = None

    _check_value = field_validator("value")(_finite)
    _check_time = field_validator("timestamp")(_event_time)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        single = [
            self.user_id, self.item_id, self.event, self.value, self.request_id, self.timestamp
        ]  # fmt: skip
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
    """503 with Retry-After: the client should send the same request again later. Why Redis
    failed (its address among it) goes to the log, not to the client."""
    logger.warning(what, extra={"reason": str(exc)})
    return HTTPException(
        status_code=503,
        detail=f"{what}: the event store (Redis) is unavailable; retry later",
        headers={"Retry-After": str(loop.store.retry_after_seconds)},
    )


@router.post(
    "/feedback",
    status_code=202,
    response_model=Accepted,
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def feedback(body: FeedbackRequest, loop: RequiredLoop, state: StateDep) -> Response:
    """Record user feedback on recommended (or any known) items."""
    events = body.to_events()
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
