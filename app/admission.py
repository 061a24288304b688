"""Admission control: a bound on the model work one worker does at once.

Every model run (a cache miss on /recommend, every /predict_rating) takes a slot. With all
slots busy a request waits in a short queue, at most INFERENCE_QUEUE_SECONDS; with the queue
full, or when the wait runs out, it is refused with 503 and Retry-After. So a flood of
uncached requests (distinct users, forced teacher) costs a bounded amount of memory and CPU,
while cached answers, which never take a slot, stay fast.

The gate is a thread-side construct: model runs happen in worker threads, and a waiting
request holds its thread, which is why the queue is bounded too (each waiter is one of
anyio's 40 threads that cache hits also need). A request refused because the queue is full
is answered only after INFERENCE_QUEUE_SECONDS, like one that waited and timed out, but
asleep on the event loop (app/errors.py), holding no thread and no CPU: otherwise a client
in a closed loop would turn instant refusals into a flood of its own, and every cached
answer would queue behind it on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from prometheus_client import Counter

logger = logging.getLogger(__name__)


class OverloadedError(Exception):
    """No slot for model work within the deadline: answered 503 with Retry-After."""

    def __init__(
        self, reason: str, *, retry_after_seconds: int, answer_after_seconds: float = 0.0
    ) -> None:
        super().__init__(f"server busy ({reason}); retry later")
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds
        # How long the answer is held back (asleep, off the thread pool).
        self.answer_after_seconds = answer_after_seconds


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
        # Retry-After is whole seconds; a wait of under one still asks for one.
        self._retry_after = max(1, round(wait_seconds))

    def _refuse(self, reason: str) -> OverloadedError:
        if self._rejected is not None:
            self._rejected.labels(reason=reason).inc()
        return OverloadedError(
            reason,
            retry_after_seconds=self._retry_after,
            # A timed-out request has waited already; one refused at once waits now.
            answer_after_seconds=self._wait_seconds if reason == "queue_full" else 0.0,
        )

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Holds one slot for the body of the `with`; raises OverloadedError if none comes."""
        if not self._slots.acquire(blocking=False):
            self._wait()
        try:
            yield
        finally:
            self._slots.release()

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
            acquired = self._slots.acquire(blocking=False)
            try:
                yield acquired
            finally:
                if acquired:
                    self._slots.release()
        finally:
            self._loop_waiting -= 1

    def _wait(self) -> None:
        with self._lock:
            if self._waiting >= self._queue_max:
                raise self._refuse("queue_full")
            self._waiting += 1
        try:
            admitted = self._wait_seconds > 0 and self._slots.acquire(timeout=self._wait_seconds)
        finally:
            with self._lock:
                self._waiting -= 1
        if not admitted:
            raise self._refuse("timeout")
