"""uvicorn's HTTP protocol with bounds on the request head (its size and the time to send
it) and on the time to send the body.

uvicorn's httptools protocol puts no limit on the request line and headers: one 100 MB
header is buffered whole, and re-joining its pieces stalls the event loop for every other
connection. This subclass counts the bytes of the head before each read is parsed and
answers 431 once they pass HTTP_MAX_HEADER_BYTES; it closes a connection that has not
completed its head within HTTP_HEADER_TIMEOUT_SECONDS, and answers 408 when a body is not
complete HTTP_BODY_TIMEOUT_SECONDS after its head (uvicorn waits for a declared body
forever: slow or idle clients would hold sockets open). Idle keep-alive connections are
uvicorn's own `--timeout-keep-alive`. A request the parser refuses is a 400 with the app's
JSON error body and a request id, not uvicorn's plain-text one.

Used through `uvicorn --http app.http_protocol:HttpProtocol` (deploy/docker/serve.sh, the
Makefile) and the gunicorn worker class (app/gunicorn_conf.py). Without httptools it falls
back to uvicorn's h11 protocol, whose own head limit is set to the same size, with the same
head and body deadlines.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import h11
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.startup import load_settings

logger = logging.getLogger(__name__)
# The blank line that ends a request head (a bare LF one too, which the parser accepts).
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_MALFORMED = "malformed HTTP request: not parseable as HTTP/1.1"


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int
    head_seconds: float
    body_seconds: float


@lru_cache(maxsize=1)
def connection_limits() -> ConnectionLimits:
    """Read once per process from the settings."""
    settings = load_settings()
    return ConnectionLimits(
        max_head_bytes=settings.http_max_header_bytes,
        head_seconds=settings.http_header_timeout_seconds,
        body_seconds=settings.http_body_timeout_seconds,
    )


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


class _Deadlines(asyncio.Protocol):
    """The head and body deadlines of one connection, for either uvicorn protocol: a
    head not complete HTTP_HEADER_TIMEOUT_SECONDS after its first bytes closes the
    connection with a 408, and so does a body not complete HTTP_BODY_TIMEOUT_SECONDS
    after its head (once the app has answered, the connection is only closed)."""

    # The protocol's own (uvicorn sets them).
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def _start_deadlines(self) -> None:
        self._limits = connection_limits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def _waiting_for_head(self) -> bool:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self._arm(self._head_timer, self._limits.head_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _arm(self, timer: asyncio.TimerHandle | None, seconds: float) -> asyncio.TimerHandle:
        if timer is not None:
            timer.cancel()
        return self.loop.call_later(seconds, self._timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _timed_out(self) -> None:
        what = "head" if self._waiting_for_head() else "body"
        self._cancel_timers()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if what == "body" and cycle is not None and cycle.response_started:
            self.transport.close()  # answered already; the rest of the body never came
            return
        self._close_with(_refusal(408, b"Request Timeout", f"request {what} not received in time"))

    def _close_with(self, response: bytes) -> None:
        self._cancel_timers()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


class LimitedH11Protocol(_Deadlines, H11Protocol):
    """h11 has a head limit of its own (answered 400); it is set to HTTP_MAX_HEADER_BYTES.
    The deadlines follow h11's state of the client's side after each read."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        if config.h11_max_incomplete_event_size is None:
            config.h11_max_incomplete_event_size = connection_limits().max_head_bytes
        super().__init__(config, *args, **kwargs)
        self._start_deadlines()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_timers()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # Bytes of a head: its clock starts with them. An idle kept-alive connection
            # is uvicorn's --timeout-keep-alive's until then.
            if self._head_timer is None and data:
                self._head_timer = self._arm(None, self._limits.head_seconds)
        elif state is h11.SEND_BODY:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._body_timer is None:
                self._body_timer = self._arm(None, self._limits.body_seconds)
        else:  # the request is complete (or the connection is ending)
            self._cancel_timers()

    def _waiting_for_head(self) -> bool:
        return bool(self.conn.their_state is h11.IDLE)

    def send_400_response(self, msg: str) -> None:
        # h11 also refuses a head over its limit this way; the message cannot tell which.
        limit = self.config.h11_max_incomplete_event_size
        self._close_with(
            _refusal(400, b"Bad Request", f"{_MALFORMED}, or its head is over {limit} bytes")
        )


if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._start_deadlines()
            # Bytes of the current head so far; it is being read while _reading_head is
            # True: from the connection's start, and after each complete message.
            self._head_bytes = 0
            self._reading_head = True
            self._head_tail = b""  # the last bytes of the head so far, for a split blank line

        def data_received(self, data: bytes) -> None:
            # Counted before the parser sees the read, so a head that arrives in one read is
            # measured too. Only a head that starts inside a read which ends the previous
            # request's body is counted from the next read on: the bound is exact but for
            # one read of pipelined requests.
            if self._reading_head and not self.transport.is_closing():
                self._head_bytes += self._head_part(data)
                if self._head_bytes > self._limits.max_head_bytes:
                    detail = (
                        f"request line and headers larger than {self._limits.max_head_bytes} bytes"
                    )
                    self._close_with(_refusal(431, b"Request Header Fields Too Large", detail))
                    return
            super().data_received(data)
            # A head whose body did not come with it: the body's clock starts once. Armed
            # here, not per head, so a request complete in its read (most) sets no timer.
            waiting = not self._reading_head and self._body_timer is None
            if waiting and not self.transport.is_closing():
                self._body_timer = self._arm(None, self._limits.body_seconds)

        def _head_part(self, data: bytes) -> int:
            """Bytes of `data` up to the end of the head (all of them if it does not end
            here). The blank line may be split across reads, or be a bare LF one."""
            seen = self._head_tail + data
            ends = [i + len(mark) for mark in _HEAD_ENDS if (i := seen.find(mark)) >= 0]
            self._head_tail = b"" if ends else seen[-3:]
            return len(data) if not ends else max(0, min(ends) - (len(seen) - len(data)))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_timer = self._arm(self._head_timer, self._limits.head_seconds)

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._cancel_timers()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._cancel_timers()
            super().on_message_complete()
            self._reading_head = True
            self._head_bytes = 0
            self._head_tail = b""

        def _waiting_for_head(self) -> bool:
            return self._reading_head

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers a request the parser refuses in plain text; clients of this
            # service read every error as the same JSON body with a request id.
            self._close_with(_refusal(400, b"Bad Request", _MALFORMED))

        def _close_with(self, response: bytes) -> None:
            self._reading_head = False  # nothing more of this connection is counted
            super()._close_with(response)

    HttpProtocol: type[asyncio.Protocol] = LimitedHttpToolsProtocol
else:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpProtocol = LimitedH11Protocol
