"""Group commit: the calls that concurrent requests make while one is in flight go to Redis
together, as one round trip.

A burst of /recommend requests on one worker used to make one Redis call each (the fresh
state read and the impression write): a thousand requests at once meant a thousand calls
competing for a pool of 100 connections, while the busy event loop stretched round trips
past their timeout: impressions were lost and feedback refused (docs/experiment.md).
Batched, a burst costs a handful of round trips on one connection.

Why hand-written: redis-py pipelines batch the calls of one caller; nothing in it gathers
the calls of many concurrent callers. This is the smallest form: while one batch is in
flight the next one gathers, so a lone call goes out at once and a burst forms batches by
itself, without a timer. A lone call runs in its caller's task; the calls that gathered
meanwhile go in batches from a task of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


def _one(_: object) -> int:
    return 1


class GroupCommit(Generic[Q, R]):
    """`await commit(query)` runs `run` on a batch holding `query`; `run` answers every
    query of its batch, in order, or raises, which every caller of the batch then sees.
    A batch weighs at most `max_weight` (`weight` of a query; 1 each by default), except a
    batch of one query."""

    def __init__(
        self,
        run: Callable[[list[Q]], Awaitable[list[R]]],
        *,
        max_weight: int,
        weight: Callable[[Q], int] = _one,
    ) -> None:
        self._run = run
        self._max_weight = max_weight
        self._weight = weight
        self._pending: list[tuple[Q, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._busy = False  # a batch is in flight

    async def __call__(self, query: Q) -> R:
        if self._busy:  # a batch is in flight: join the next one
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._pending.append((query, future))
            return await future
        # Nothing in flight: go at once, from this task, alone (no task, no loop turn lost).
        self._busy = True
        try:
            [result] = await self._run([query])
        finally:
            self._hand_off()
        return result

    def _hand_off(self) -> None:
        if self._pending:
            self._drainer = asyncio.create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._answer(self._next_batch())
        finally:
            self._drainer = None
            self._busy = False

    def _next_batch(self) -> list[tuple[Q, asyncio.Future[R]]]:
        size, total = 0, 0
        for query, _ in self._pending:
            total += self._weight(query)
            if size and total > self._max_weight:
                break
            size += 1
        batch = self._pending[:size]
        del self._pending[:size]
        return batch

    async def _answer(self, batch: list[tuple[Q, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([query for query, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller must hear of it, whatever it is
            for _, future in batch:
                if not future.done():  # a caller that went away cancelled its future
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        """Cancels what is queued and in flight."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
