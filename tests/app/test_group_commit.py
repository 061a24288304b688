"""Group commit: concurrent calls share round trips, each caller gets its own answer or the
batch's error, and a caller that goes away harms no one else."""

from __future__ import annotations

import asyncio

import pytest

from app.group_commit import GroupCommit


class Recorder:
    """A `run` that doubles its queries and remembers each batch; it can be made to fail
    or to wait until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail: Exception | None = None
        self.release: asyncio.Event | None = None

    async def __call__(self, queries: list[int]) -> list[int]:
        self.batches.append(list(queries))
        await asyncio.sleep(0.001)  # a round trip
        if self.release is not None:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [2 * q for q in queries]


def test_a_lone_call_goes_at_once_and_a_burst_shares_round_trips() -> None:
    async def scenario() -> tuple[int, list[int], list[list[int]]]:
        run = Recorder()
        commit = GroupCommit(run, max_weight=4)
        alone = await commit(7)
        answers = await asyncio.gather(*(commit(n) for n in range(10)))
        return alone, list(answers), run.batches

    alone, answers, batches = asyncio.run(scenario())
    assert alone == 14
    assert answers == [2 * n for n in range(10)]
    # The first of the ten goes alone at once; those that came while it was in flight go
    # in batches of at most four, in call order.
    assert batches == [[7], [0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_weights_bound_a_batch_but_never_refuse_one_heavy_query() -> None:
    async def scenario() -> list[list[int]]:
        run = Recorder()
        commit = GroupCommit(run, max_weight=5, weight=lambda q: q)
        await asyncio.gather(*(commit(n) for n in (2, 3, 1, 9, 4)))  # 2 goes alone
        return run.batches

    assert asyncio.run(scenario()) == [[2], [3, 1], [9], [4]]


def test_calls_made_while_a_batch_is_in_flight_form_the_next_batch() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        run = Recorder()
        run.release = asyncio.Event()
        commit = GroupCommit(run, max_weight=100)
        first = asyncio.ensure_future(commit(1))
        await asyncio.sleep(0.01)  # the first batch is now waiting on `run`
        later = [asyncio.ensure_future(commit(n)) for n in (2, 3)]
        await asyncio.sleep(0.01)
        run.release.set()
        answers = await asyncio.gather(first, *later)
        return list(answers), run.batches

    answers, batches = asyncio.run(scenario())
    assert answers == [2, 4, 6]
    assert batches == [[1], [2, 3]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs() -> None:
    async def scenario() -> tuple[list[object], int]:
        run = Recorder()
        run.fail = ConnectionError("down")
        commit = GroupCommit(run, max_weight=100)
        outcomes = await asyncio.gather(*(commit(n) for n in range(3)), return_exceptions=True)
        run.fail = None
        return list(outcomes), await commit(5)

    outcomes, after = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [ConnectionError] * 3
    assert after == 10


def test_a_caller_that_goes_away_leaves_the_others_their_answers() -> None:
    async def scenario() -> tuple[bool, list[int]]:
        run = Recorder()
        run.release = asyncio.Event()
        commit = GroupCommit(run, max_weight=100)
        gone = asyncio.ensure_future(commit(1))
        stays = asyncio.ensure_future(commit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        run.release.set()
        answer = await stays
        return gone.cancelled(), [answer, await commit(3)]

    cancelled, answers = asyncio.run(scenario())
    assert cancelled
    assert answers == [4, 6]


def test_aclose_cancels_what_is_in_flight_and_queued() -> None:
    async def scenario() -> list[asyncio.Future[int]]:
        hang = asyncio.Event()  # never set

        async def run(queries: list[int]) -> list[int]:
            if queries == [0]:  # the lone first call answers; every batch after it hangs
                await asyncio.sleep(0.005)
            else:
                await hang.wait()
            return queries

        commit = GroupCommit(run, max_weight=1)
        calls = [asyncio.ensure_future(commit(n)) for n in range(4)]
        await asyncio.sleep(0.01)  # call 0 answered, call 1 in flight, calls 2 and 3 queued
        await commit.aclose()
        await asyncio.gather(*calls, return_exceptions=True)
        return calls

    calls = asyncio.run(scenario())
    assert calls[0].result() == 0
    assert all(call.cancelled() for call in calls[1:])
    with pytest.raises(asyncio.CancelledError):
        calls[1].result()
