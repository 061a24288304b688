"""Pure ASGI middleware: request id, HTTP latency metric and one access log line.

Metrics and the access-log switch come from the services the lifespan puts on app.state,
looked up per request: the middleware is built with the app, before they exist.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging_setup import request_id_var
from app.services import Services

access_logger = logging.getLogger("app.access")
logger = logging.getLogger(__name__)
# A client-sent id is echoed into logs and headers; accept only a short, plain one.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope.get("path")})
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            # The template, not the raw path: raw paths would make unbounded label values.
            template = getattr(route, "path", None) or "unmatched"
            variant = scope.get("state", {}).get("variant", "none")
            # None before the lifespan has built the services (or after it has ended).
            services: Services | None = getattr(self.state, "services", None)
            if services is not None:
                services.metrics.http_request_duration_seconds.labels(
                    route=template, method=scope["method"], status=str(status), variant=variant
                ).observe(elapsed)
            if services is None or services.settings.access_log:
                access_logger.info(
                    "request",
                    extra={"method": scope["method"], "route": template, "status": status,
                           "variant": variant, "duration_ms": round(elapsed * 1000, 3)},
                )
            request_id_var.reset(token)
