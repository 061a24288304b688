"""Pure ASGI middleware: request id, HTTP latency metric and one access log line.

Metrics and the access-log switch come from the services the lifespan puts on app.state,
looked up per request: the middleware is built with the app, before they exist.

It is also where an error that escaped everything else is answered: a 500 carrying the
request id in its body and header, and a failed start-up reported to uvicorn as one line
(app/startup.py) instead of a traceback.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.limits import send_error
from app.logging_setup import request_id_var
from app.services import Services, services_of
from app.startup import one_line

access_logger = logging.getLogger("app.access")
logger = logging.getLogger(__name__)
# A client-sent id is echoed into logs and headers; accept only a short, plain one.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Histogram children kept per label tuple, saving labels()'s lock and checks per request.
# The method is client-controlled, so the memo is bounded; beyond it labels() is called.
_MAX_MEMO_CHILDREN = 1024
# The method label takes these as they are and folds anything else (httptools accepts
# WebDAV and other methods, h11 any token) into one value, so clients cannot mint series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        # The app's state (app.state), where the lifespan puts `services`.
        self.state = state
        self._children: dict[tuple[str, str, int, str], Any] = {}
        self._children_of: object = None  # the Metrics the memo belongs to

    def _observe(
        self, services: Services, labels: tuple[str, str, int, str], elapsed: float
    ) -> None:
        metrics = services.metrics
        if self._children_of is not metrics:  # a new lifespan built new metrics
            self._children = {}
            self._children_of = metrics
        child = self._children.get(labels)
        if child is None:
            route, method, status, variant = labels
            child = metrics.http_request_duration_seconds.labels(
                route=route, method=method, status=str(status), variant=variant
            )
            if len(self._children) < _MAX_MEMO_CHILDREN:
                self._children[labels] = child
        child.observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope.get("path")})
            if response_started:
                raise
            # Answered here, inside the request context: the body and the header carry
            # the id that the log line above carries.
            await send_error(send_with_id, 500, "internal error")
        finally:
            elapsed = time.perf_counter() - started
            self._record(scope, status, elapsed)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        # The template, not the raw path: raw paths would make unbounded label values.
        template = getattr(route, "path", None) or "unmatched"
        variant = scope.get("state", {}).get("variant", "none")
        method = method_label(scope["method"])
        # None before the lifespan has built the services (or after it has ended).
        services = services_of(self.state)
        if services is not None:
            self._observe(services, (template, method, status, variant), elapsed)
        if (services is None or services.settings.access_log) and access_logger.isEnabledFor(
            logging.INFO
        ):
            access_logger.info(
                "request",
                extra={
                    "method": method,
                    "route": template,
                    "status": status,
                    "variant": variant,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Passes the lifespan through, but reports a failed start-up as one line.

        Starlette sends `lifespan.startup.failed` with the whole traceback as its message,
        which uvicorn logs as is, then raises; the message is held back until the exception
        is known and replaced by app.startup.one_line's. The traceback stays available at
        DEBUG.
        """
        failed: Message | None = None

        async def send_lifespan(message: Message) -> None:
            nonlocal failed
            if message["type"] == "lifespan.startup.failed":
                failed = message
                return
            await send(message)

        try:
            await self.app(scope, receive, send_lifespan)
        except BaseException as exc:
            if failed is not None:
                logger.debug("start-up failed", exc_info=exc)
                await send({"type": "lifespan.startup.failed", "message": one_line(exc)})
            raise
        if failed is not None:
            await send(failed)
