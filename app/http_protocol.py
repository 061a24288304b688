"""uvicorn's HTTP protocol with a bound on the request head: its size and the time to send it.

uvicorn's httptools protocol puts no limit on the request line and headers: one 100 MB
header is buffered whole, and re-joining its pieces stalls the event loop for every other
connection. This subclass counts the bytes of the head as they arrive and answers 431 once
they pass HTTP_MAX_HEADER_BYTES, and it closes a connection that has not completed its head
within HTTP_HEADER_TIMEOUT_SECONDS (slow or idle clients holding sockets open). Idle
keep-alive connections are uvicorn's own `--timeout-keep-alive`.

Used through `uvicorn --http app.http_protocol:HttpProtocol` (deploy/docker/serve.sh, the
Makefile) and the gunicorn worker class (app/gunicorn_conf.py). Without httptools it falls
back to uvicorn's h11 protocol, whose own limit is set to the same size.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import uuid
from functools import lru_cache
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.startup import load_settings

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def head_limits() -> tuple[int, float]:
    """(max head bytes, seconds to send a head), read once per process from the settings."""
    settings = load_settings()
    return settings.http_max_header_bytes, settings.http_header_timeout_seconds


def _refusal(status: int, reason: bytes, detail: str) -> bytes:
    """A complete response, shaped like the app's errors: no request reached the app, so
    the id is made here (and logged with the reason)."""
    request_id = uuid.uuid4().hex
    logger.warning(
        "request head refused", extra={"status": status, "reason": detail, "id": request_id}
    )
    body = orjson.dumps({"detail": detail, "request_id": request_id})
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id.encode(),
            b"connection: close\r\n\r\n",
            body,
        )
    )


class LimitedH11Protocol(H11Protocol):
    """h11 has a limit of its own (answered 400); it is set to HTTP_MAX_HEADER_BYTES."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        if config.h11_max_incomplete_event_size is None:
            config.h11_max_incomplete_event_size = head_limits()[0]
        super().__init__(config, *args, **kwargs)


if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._max_head, self._head_seconds = head_limits()
            self._head_bytes = 0
            # True while a request head is awaited or arriving, until its headers are complete.
            self._reading_head = True
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # A read after which the head is still incomplete counts in full (one read may
            # also hold the end of the previous body: the bound is the limit plus one read,
            # not more, so a huge head is refused long before it is buffered whole).
            if self._reading_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head:
                    self._close_with(
                        _refusal(
                            431,
                            b"Request Header Fields Too Large",
                            f"request line and headers larger than {self._max_head} bytes",
                        )
                    )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading_head = True
            self._head_bytes = 0
            self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self._head_seconds, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._reading_head and not self.transport.is_closing():
                self._close_with(
                    _refusal(408, b"Request Timeout", "request head not received in time")
                )

        def _close_with(self, response: bytes) -> None:
            self._cancel_head_timer()
            self._reading_head = False
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    HttpProtocol: type[asyncio.Protocol] = LimitedHttpToolsProtocol
else:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpProtocol = LimitedH11Protocol
