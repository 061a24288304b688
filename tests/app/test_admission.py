"""Admission control: the gate itself, and the 503 answer with Retry-After in the service."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from app.admission import AdmissionGate, OverloadedError, QueueFullError
from tests.app.conftest import Reference, metric_value


def _counter() -> Counter:
    return Counter("rejected", "test", ["reason"], registry=CollectorRegistry())


def test_slots_then_queue_then_queue_full() -> None:
    gate = AdmissionGate(slots=1, queue_max=1, wait_seconds=5, rejected=_counter())
    holding, release = threading.Event(), threading.Event()
    admitted_after_wait: list[float] = []

    def hold() -> None:
        with gate.slot():
            holding.set()
            release.wait(10)

    def wait_in_queue() -> None:
        started = time.monotonic()
        with gate.slot():
            admitted_after_wait.append(time.monotonic() - started)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    waiter = threading.Thread(target=wait_in_queue)
    waiter.start()
    time.sleep(0.2)  # the waiter is now queued: the queue (1) is full
    # No third thread waits: `admit` waits for room on the event loop instead.
    with pytest.raises(QueueFullError), gate.slot():
        pass
    release.set()
    holder.join(5)
    waiter.join(5)
    assert admitted_after_wait and admitted_after_wait[0] >= 0.15


def test_a_wait_that_runs_out_is_refused() -> None:
    rejected = _counter()
    gate = AdmissionGate(slots=1, queue_max=4, wait_seconds=0.1, rejected=rejected)
    with gate.slot():
        started = time.monotonic()
        with pytest.raises(OverloadedError) as refused, gate.slot():
            pass
        assert 0.09 <= time.monotonic() - started < 2
    assert refused.value.reason == "timeout" and refused.value.retry_after_seconds == 1
    with gate.slot():  # released on every path: the slot is free again
        pass


def test_busy_service_answers_503_with_retry_after_but_serves_cached(
    make_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = make_client(
        inference_concurrency=1, inference_queue_max=0, inference_queue_seconds=0.3
    )
    user, other = reference.users[0], reference.users[1]
    assert client.get("/recommend", params={"user_id": user}).status_code == 200  # now cached
    gate = client.app.state.services.admission  # type: ignore[attr-defined]
    with gate.slot():  # all model capacity taken
        started = time.monotonic()
        busy = client.get("/recommend", params={"user_id": other})
        assert time.monotonic() - started >= 0.25  # it waited for room, asleep on the loop
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["request_id"] == busy.headers["x-request-id"]
        rating = client.post(
            "/predict_rating", json={"user_id": user, "item_id": reference.items[0]}
        )
        assert rating.status_code == 503
        cached = client.get("/recommend", params={"user_id": user})
        assert cached.status_code == 200 and cached.json()["cached"] is True
    assert client.get("/recommend", params={"user_id": other}).status_code == 200
    # Both waited for room on the event loop (AdmissionGate.admit) until their time ran out.
    assert metric_value(client, "inference_rejected_total", reason="timeout") == 2


def test_the_event_loop_takes_work_only_while_few_misses_wait() -> None:
    """Alone, a miss may run on the loop (holding a slot); when more misses are ready on
    the loop than the gate has slots, none does: they go to threads, where the gate sheds."""
    gate = AdmissionGate(slots=2, queue_max=0, wait_seconds=0)
    held: list[bool] = []

    async def one() -> bool:
        async with gate.on_loop() as here:
            if here:  # the work holds a slot: with both taken, a thread would wait
                with gate.slot(), pytest.raises(QueueFullError):
                    held.append(True)
                    with gate.slot():
                        pass
            return here

    async def many(n: int) -> list[bool]:
        return list(await asyncio.gather(*(one() for _ in range(n))))

    assert asyncio.run(many(1)) == [True] and held == [True]
    assert asyncio.run(many(2)) == [True, True]
    # Three ready, two slots: the first to resume leaves for a thread; then two remain.
    assert asyncio.run(many(3)) == [False, True, True]
    assert asyncio.run(many(6)).count(True) == 2
    with gate.slot(), gate.slot():  # every slot taken by threads: not on the loop either
        assert asyncio.run(many(1)) == [False]
    assert gate._loop_waiting == 0


def _attempt(gate: AdmissionGate, order: list[int], n: int) -> Callable[[float], Awaitable[int]]:
    """An `admit` attempt: model work in a worker thread, as /recommend's."""

    def work(seconds: float) -> int:
        with gate.slot(wait_seconds=seconds):
            order.append(n)
            time.sleep(0.01)
        return n

    async def attempt(seconds: float) -> int:
        return await asyncio.to_thread(work, seconds)

    return attempt


def test_a_full_queue_is_waited_out_on_the_loop_and_every_caller_is_served() -> None:
    rejected = _counter()
    gate = AdmissionGate(slots=1, queue_max=1, wait_seconds=5, rejected=rejected)
    order: list[int] = []

    async def burst() -> tuple[list[int], int]:
        release = threading.Event()
        holder = asyncio.ensure_future(asyncio.to_thread(_hold, gate, release))
        await asyncio.sleep(0.05)  # the one slot is taken
        calls = []
        for n in range(6):
            calls.append(asyncio.ensure_future(gate.admit(_attempt(gate, order, n))))
            await asyncio.sleep(0.02)  # arrival order
        queued_in_threads = gate._waiting
        release.set()
        await holder
        return list(await asyncio.gather(*calls)), queued_in_threads

    served, queued_in_threads = asyncio.run(burst())
    # One waited in the thread-side queue (its bound); five waited on the loop, holding no
    # thread, where a count-bounded queue refused them at once.
    assert queued_in_threads == 1
    assert served == list(range(6))
    # The queued one first; the others oldest first as far as their threads keep their
    # order (two woken at once race to the queue).
    assert order[0] == 0 and sorted(order) == list(range(6))
    assert rejected.labels(reason="timeout")._value.get() == 0


def _hold(gate: AdmissionGate, release: threading.Event) -> None:
    with gate.slot():
        release.wait(10)


def test_a_wait_for_room_that_runs_out_is_refused_at_once() -> None:
    rejected = _counter()
    gate = AdmissionGate(slots=1, queue_max=0, wait_seconds=0.2, rejected=rejected)

    async def refused() -> tuple[OverloadedError, float]:
        with gate.slot():  # held by this thread for the whole wait
            started = time.monotonic()
            with pytest.raises(OverloadedError) as caught:
                await gate.admit(_attempt(gate, [], 0))
            return caught.value, time.monotonic() - started

    error, waited = asyncio.run(refused())
    assert error.reason == "timeout"
    assert 0.18 <= waited < 2
    assert rejected.labels(reason="timeout")._value.get() == 1


def test_room_given_to_a_caller_that_left_goes_to_the_next() -> None:
    gate = AdmissionGate(slots=1, queue_max=0, wait_seconds=5)

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        with gate.slot():
            first = asyncio.ensure_future(gate._room(loop, 5, first=False))
            second = asyncio.ensure_future(gate._room(loop, 5, first=False))
            await asyncio.sleep(0.01)
            gate._wake_one()  # room for the first, which is cancelled before it resumes
            first.cancel()
            return await asyncio.wait_for(second, 1)

    assert asyncio.run(scenario()) is True
    assert not gate._room_waiters


def test_the_event_loop_never_takes_a_slot_ahead_of_queued_requests() -> None:
    gate = AdmissionGate(slots=2, queue_max=4, wait_seconds=1)

    async def here() -> bool:
        async with gate.on_loop() as on_loop:
            return on_loop

    assert asyncio.run(here()) is True
    gate._waiting = 1  # a request waits in a worker thread for the slot about to free
    assert asyncio.run(here()) is False
    gate._waiting = 0
    with gate.slot():  # a slot is free, but a request waits on the loop for room
        loop = asyncio.new_event_loop()
        try:
            gate._room_waiters.append(loop.create_future())
            assert loop.run_until_complete(here()) is False
        finally:
            gate._room_waiters.clear()
            loop.close()
    assert asyncio.run(here()) is True
