"""Exception handlers: every error is `{"detail": "...", "request_id": "..."}` with a clear
message and no trace; the id is the one of the X-Request-ID header and the log lines."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.admission import OverloadedError
from app.logging_setup import request_id_var
from app.responses import JSONBytesResponse

logger = logging.getLogger(__name__)
ERRORS_SHOWN = 20


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    location = ".".join(str(part) for part in loc if part != "body") or "body"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    kind = error.get("type")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error")
        return f"malformed JSON body: {reason}" if reason else "malformed JSON body"
    if kind == "missing" and loc == ("body",):
        return "body: a JSON object is required"
    return f"{location}: {message}"


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    everything = exc.errors()
    # A batch can hold thousands of wrong fields; the first few say what to fix, and the
    # answer stays small however hostile the body.
    errors = [dict(error) for error in everything[:ERRORS_SHOWN]]
    messages = [_describe(error) for error in errors]
    if len(everything) > ERRORS_SHOWN:
        messages.append(f"and {len(everything) - ERRORS_SHOWN} more errors")
    # Only location and message go back: the raw input could be large or sensitive.
    return JSONBytesResponse(
        {
            "detail": "; ".join(messages),
            "errors": [
                {
                    "loc": [str(p) for p in e.get("loc", ())],
                    "msg": str(e.get("msg")).removeprefix("Value error, "),
                }
                for e in errors
            ],
            "request_id": request_id_var.get(),
        },
        status_code=422,
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONBytesResponse(
        {"detail": exc.detail, "request_id": request_id_var.get()},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def overloaded(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OverloadedError)
    return JSONBytesResponse(
        {"detail": str(exc), "request_id": request_id_var.get()},
        status_code=503,
        headers={"Retry-After": str(exc.retry_after_seconds)},
    )


async def unhandled_error(request: Request, exc: Exception) -> Response:
    return JSONBytesResponse(
        {"detail": "internal error", "request_id": request_id_var.get()}, status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(OverloadedError, overloaded)
    app.add_exception_handler(Exception, unhandled_error)
