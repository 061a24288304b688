"""Admission control: a bound on the model work one worker does at once.

Every model run (a cache miss on /recommend, every /predict_rating) takes a slot. With all
slots busy a request waits in a short queue of worker threads; with that queue full it
waits on the event loop for room, holding no thread; at most INFERENCE_QUEUE_SECONDS in
all, then it is refused with 503 and Retry-After. So a flood of uncached requests (distinct
users, forced teacher) costs a bounded amount of memory and CPU, while cached answers,
which never take a slot, stay fast.

The thread-side queue is bounded because each waiter there holds one of anyio's 40 threads,
which Redis look-ups also need. Waiting for room on the loop (`AdmissionGate.admit`) costs a
coroutine asleep: a burst of misses that reach the gate together (a batch of fresh reads
releases up to 128 at once, app/group_commit.py) is served, oldest first, as far as the
deadline allows, where refusing all but the queue's 16 at once served fewer. A refusal
comes only after the whole wait, so a client that retries at once cannot turn refusals
into a flood of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from prometheus_client import Counter

logger = logging.getLogger(__name__)

T = TypeVar("T")


class OverloadedError(Exception):
    """No slot for model work within the deadline: answered 503 with Retry-After."""

    def __init__(self, reason: str, *, retry_after_seconds: int) -> None:
        super().__init__(f"server busy ({reason}); retry later")
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds


class QueueFullError(Exception):
    """The thread-side queue is full: `AdmissionGate.admit` waits for room on the event
    loop and tries again."""


class AdmissionGate:
    def __init__(
        self,
        *,
        slots: int,
        queue_max: int,
        wait_seconds: float,
        rejected: Counter | None = None,
    ) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._slot_count = slots
        self._loop_waiting = 0
        self._queue_max = queue_max
        self._wait_seconds = wait_seconds
        self._waiting = 0
        self._lock = threading.Lock()
        self._rejected = rejected
        # Callers of `admit` waiting for room, oldest first; touched on the loop only.
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Retry-After is whole seconds; a wait of under one still asks for one.
        self._retry_after = max(1, round(wait_seconds))

    def _refuse(self, reason: str) -> OverloadedError:
        if self._rejected is not None:
            self._rejected.labels(reason=reason).inc()
        return OverloadedError(reason, retry_after_seconds=self._retry_after)

    @contextmanager
    def slot(self, *, wait_seconds: float | None = None) -> Iterator[None]:
        """Holds one slot for the body of the `with` (in a worker thread); raises
        QueueFullError when the queue is full, OverloadedError when no slot comes within
        `wait_seconds` (default INFERENCE_QUEUE_SECONDS). Requests take it through `admit`."""
        # A free slot goes to those already queued first: no newcomer jumps the queue.
        if self._waiting or not self._slots.acquire(blocking=False):
            self._wait(self._wait_seconds if wait_seconds is None else wait_seconds)
        try:
            yield
        finally:
            self._slots.release()
            self._room_opened()

    async def admit(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        """`attempt(seconds)`, whose model work takes `slot(wait_seconds=seconds)` in a
        worker thread; while it finds the queue full, waits on the event loop, oldest first,
        for room and tries again, INFERENCE_QUEUE_SECONDS in all; then refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_seconds
        woken = False
        while True:
            try:
                return await attempt(max(0.0, deadline - loop.time()))
            except QueueFullError:
                pass
            remaining = deadline - loop.time()
            # Woken but beaten to the room: first in line again, not last.
            woken = remaining > 0 and await self._room(loop, remaining, first=woken)
            if not woken:
                raise self._refuse("timeout")

    async def _room(self, loop: asyncio.AbstractEventLoop, seconds: float, *, first: bool) -> bool:
        """Whether room opened in the queue (or a slot came free) within `seconds`."""
        self._loop = loop
        waiter: asyncio.Future[None] = loop.create_future()
        if first:
            self._room_waiters.appendleft(waiter)
        else:
            self._room_waiters.append(waiter)
        # Room that opened before this waiter was listed woke no one: look once more.
        if self._waiting < self._queue_max or self._slot_free():
            self._wake_one()
        try:
            # Not wait_for: on Python 3.11 it swallows a cancellation that meets a result.
            await asyncio.wait({waiter}, timeout=seconds)
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # the client left: pass the room on
                self._wake_one()
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._room_waiters.remove(waiter)
        return not waiter.cancelled()

    def _slot_free(self) -> bool:
        if self._slots.acquire(blocking=False):
            self._slots.release()
            return True
        return False

    def _room_opened(self) -> None:
        """From any thread: a slot or a place in the queue came free; wakes one waiter."""
        loop = self._loop
        if loop is not None and self._room_waiters:
            with contextlib.suppress(RuntimeError):  # the loop is closed: no one waits
                loop.call_soon_threadsafe(self._wake_one)

    def _wake_one(self) -> None:
        while self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @asynccontextmanager
    async def on_loop(self) -> AsyncIterator[bool]:
        """Whether cheap model work may run right here on the event loop (True for the
        body of the `async with`, holding a slot), never waiting for one.

        Work on the loop runs one request at a time, so it could never overlap and the
        gate would never shed it: a flood would queue unbounded on the loop, with cached
        answers behind it. So each caller first lets every request the loop has ready
        reach this point (one pass of the loop) and counts them; when more wait than the
        gate has slots, the answer is no and the work goes to a worker thread, where the
        gate queues and sheds it as usual.
        """
        self._loop_waiting += 1  # read and written on the event loop's thread only
        try:
            await asyncio.sleep(0)
            if self._loop_waiting > self._slot_count:
                yield False
                return
            # Never ahead of requests already waiting for a slot, in threads or on the loop.
            queued = self._waiting or self._room_waiters
            acquired = not queued and self._slots.acquire(blocking=False)
            try:
                yield acquired
            finally:
                if acquired:
                    self._slots.release()
        finally:
            self._loop_waiting -= 1

    def _wait(self, seconds: float) -> None:
        with self._lock:
            if self._waiting >= self._queue_max:
                raise QueueFullError
            self._waiting += 1
        try:
            admitted = seconds > 0 and self._slots.acquire(timeout=seconds)
        finally:
            with self._lock:
                self._waiting -= 1
            self._room_opened()
        if not admitted:
            raise self._refuse("timeout")
