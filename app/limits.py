"""Refusals decided from the request head alone, before any body is read.

* a body above MAX_BODY_BYTES: 413 at once when Content-Length says so, and while reading
  when it does not (chunked), so an oversized body is never buffered whole;
* /admin/* without the right bearer token: 401/403 before the body is parsed, so an
  anonymous client cannot make the service parse large admin bodies;
* X-Variant where VARIANT_OVERRIDE forbids it: 403.

The header size limit itself lives in the HTTP protocol (app/http_protocol.py): by the time
an ASGI middleware runs, the headers are already parsed.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.logging_setup import request_id_var

ADMIN_PREFIX = "/admin"


class BodyTooLargeError(HTTPException):
    """Raised from `receive` once a streamed body passes the limit; rendered as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"request body larger than {limit} bytes",
            # The rest of the body is never read: the connection cannot be reused.
            headers={"Connection": "close"},
        )


def admin_refusal(settings: Settings, authorization: bytes | None) -> tuple[int, str] | None:
    """(status, detail) when an admin call must be refused, None when the token is right.

    Without ADMIN_TOKEN the admin routes answer like unknown paths (app/api/gate.py), so
    there is nothing to refuse here.
    """
    token = settings.admin_token
    if token is None:
        return None
    scheme, _, credentials = (authorization or b"").partition(b" ")
    if authorization is None or scheme.lower() != b"bearer" or not credentials.strip():
        return 401, "missing bearer token"
    # Constant-time: the time taken must not tell how much of a guess was right.
    if not hmac.compare_digest(credentials.strip(), token.get_secret_value().encode()):
        return 403, "invalid admin token"
    return None


def override_refusal(
    policy: Literal["allow", "admin", "deny"], settings: Settings, authorization: bytes | None
) -> tuple[int, str] | None:
    if policy == "allow":
        return None
    if policy == "admin" and settings.admin_token is not None:
        if admin_refusal(settings, authorization) is None:
            return None
        return 403, "X-Variant needs the admin bearer token (VARIANT_OVERRIDE=admin)"
    return 403, "X-Variant overrides are disabled on this service (VARIANT_OVERRIDE)"


async def send_error(
    send: Send, status: int, detail: str, *, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON error answered by a middleware, shaped like the app's own (app/errors.py)."""
    body = orjson.dumps({"detail": detail, "request_id": request_id_var.get()})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _limited(receive: Receive, limit: int) -> Receive:
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLargeError(limit)
        return message

    return receive_limited


class RequestLimitsMiddleware:
    """Pure ASGI; reads its settings from the services the lifespan put on app.state."""

    def __init__(self, app: ASGIApp, *, state: object) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = getattr(self.state, "services", None)
        if scope["type"] != "http" or services is None:
            await self.app(scope, receive, send)
            return
        settings: Settings = services.settings
        head = _RequestHead.read(scope["headers"])
        refusal = _refusal(settings, head, path=scope["path"])
        has_body = head.chunked or head.length is not None
        if refusal is not None:
            status, detail = refusal
            # A body that will not be read: close rather than wait for it to be discarded.
            headers = [(b"connection", b"close")] if has_body else []
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            await send_error(send, status, detail, headers=headers)
            return
        if has_body:
            receive = _limited(receive, settings.max_body_bytes)
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class _RequestHead:
    """The few request headers the limits look at."""

    length: bytes | None = None
    chunked: bool = False
    authorization: bytes | None = None
    variant: bool = False

    @classmethod
    def read(cls, headers: list[tuple[bytes, bytes]]) -> _RequestHead:
        found: dict[str, Any] = {}
        # One pass over the raw headers: this runs on every request.
        for name, value in headers:
            if name == b"content-length":
                found["length"] = value
            elif name == b"transfer-encoding":
                found["chunked"] = True
            elif name == b"authorization":
                found["authorization"] = value
            elif name == b"x-variant":
                found["variant"] = True
        return cls(**found)


def _refusal(settings: Settings, head: _RequestHead, *, path: str) -> tuple[int, str] | None:
    """(status, detail) of a request refused before its body is read, else None."""
    limit = settings.max_body_bytes
    if head.length is not None and not head.length.isdigit():
        return 400, "invalid Content-Length"
    if head.length is not None and int(head.length) > limit:
        return 413, f"request body larger than {limit} bytes"
    if path.startswith(ADMIN_PREFIX + "/"):
        refusal = admin_refusal(settings, head.authorization)
        if refusal is not None:
            return refusal
    if head.variant:
        return override_refusal(settings.variant_override, settings, head.authorization)
    return None
