"""Batch routes refuse a batch over its setting before FastAPI validates it into models.

FastAPI validates a body in full before the handler can look at it: a refused /predict_rating
body of tens of thousands of pairs (under the 1 MiB body limit) became as many pydantic
models first, on the event loop, and a flood of them held hundreds of MB in a worker. The
route class reads the JSON itself (`Request.json` keeps what it
parsed, so FastAPI does not parse it again), counts the batch, and answers 422 with the
setting's limit when it is too long. A body it cannot read as JSON goes on to FastAPI,
which reports it (app.api.json_body).
"""

from __future__ import annotations

import email.message
import json
from typing import ClassVar

from fastapi import HTTPException, Request

from app.api.json_body import StrictJsonRoute
from app.config import Settings
from app.services import services_of


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI reads the body as JSON (its own rule; no type means not)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class BatchLimitedRoute(StrictJsonRoute):
    """Subclasses name the batch field and the setting that bounds it."""

    batch_field: ClassVar[str]

    @staticmethod
    def batch_limit(settings: Settings) -> int:
        raise NotImplementedError

    async def inspect(self, request: Request) -> None:
        await super().inspect(request)
        services = services_of(request.app.state)
        if services is None or not _is_json(request.headers.get("content-type")):
            return
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return  # FastAPI answers it: 422 "malformed JSON body: <reason>"
        batch = body.get(self.batch_field) if isinstance(body, dict) else None
        limit = self.batch_limit(services.settings)
        if isinstance(batch, list) and len(batch) > limit:
            raise HTTPException(
                422, f"{self.batch_field}: {len(batch)} given, at most {limit} per request"
            )
