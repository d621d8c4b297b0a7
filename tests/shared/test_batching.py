"""The natural batcher: batches form from what queued meanwhile, and past capacity stale items are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.batching import MIN_CAP, Handler, NaturalBatcher


class Refused(Exception):
    pass


def recorder(batches: list[list[int]], seconds_per_item: float = 0.0) -> Handler[int, int]:
    async def handle(items: list[int]) -> list[int | Exception]:
        batches.append(list(items))
        await asyncio.sleep(seconds_per_item * len(items))
        return [Refused(f"odd {i}") if i < 0 else i * 10 for i in items]

    return handle


async def test_a_lone_item_is_a_batch_of_one_and_what_queues_meanwhile_is_the_next_batch() -> None:
    batches: list[list[int]] = []
    batcher: NaturalBatcher[int, int] = NaturalBatcher(recorder(batches, 0.01), max_size=100)
    assert await batcher.submit(1) == 10
    first = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)  # its batch is in flight
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(3, 8)]
    assert await asyncio.gather(first, *rest) == [20, 30, 40, 50, 60, 70]
    assert batches == [[1], [2], [3, 4, 5, 6, 7]]


async def test_an_item_s_own_error_goes_to_its_caller_alone() -> None:
    batches: list[list[int]] = []
    batcher: NaturalBatcher[int, int] = NaturalBatcher(recorder(batches), max_size=100)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)
    assert results[0] == 10 and isinstance(results[1], Refused) and results[2] == 20


async def test_a_failing_handler_fails_its_whole_batch_and_the_next_batch_runs() -> None:
    calls = 0

    async def handle(items: list[int]) -> Sequence[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database down")
        return list(items)

    batcher: NaturalBatcher[int, int] = NaturalBatcher(handle, max_size=100)
    with pytest.raises(RuntimeError):
        await batcher.submit(1)
    assert await batcher.submit(2) == 2


async def test_callers_gone_before_their_batch_are_not_worked_on() -> None:
    batches: list[list[int]] = []
    batcher: NaturalBatcher[int, int] = NaturalBatcher(recorder(batches, 0.02), max_size=100)
    busy = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    assert await busy == 10 and await kept == 30
    assert batches == [[1], [3]]


async def test_a_batch_is_sized_to_its_budget_once_items_have_been_timed() -> None:
    batches: list[list[int]] = []
    batcher: NaturalBatcher[int, int] = NaturalBatcher(recorder(batches, 0.002), max_size=1000, budget=0.04)
    await asyncio.gather(*(batcher.submit(i) for i in range(50)))  # times a batch of 50 items
    assert batcher.seconds_per_item is not None
    assert MIN_CAP <= batcher.cap <= 30  # about 0.04 s / 0.002 s = 20, whatever the machine adds
    batches.clear()
    await asyncio.gather(*(batcher.submit(i) for i in range(100)))
    assert max(len(b) for b in batches) <= 30 and sum(len(b) for b in batches) == 100


async def test_a_burst_that_drains_is_served_whole() -> None:
    batches: list[list[int]] = []
    batcher: NaturalBatcher[int, int] = NaturalBatcher(
        recorder(batches, 0.001), max_size=10, overload_wait=0.001, standing_after=5.0,
        shed=lambda i: Refused(f"shed {i}"),
    )  # fmt: skip
    assert await asyncio.gather(*(batcher.submit(i) for i in range(100))) == [i * 10 for i in range(100)]


async def test_a_standing_queue_refuses_what_waited_too_long_and_serves_what_is_fresh() -> None:
    batches: list[list[int]] = []
    batcher: NaturalBatcher[int, int] = NaturalBatcher(
        recorder(batches, 0.005), max_size=4, overload_wait=0.05, standing_after=0.1,
        shed=lambda i: Refused(f"shed {i}"),
    )  # fmt: skip
    # Sustained overload: 4 items per 20 ms served, 8 offered per 10 ms, for 0.6 s.
    tasks = []
    for tick in range(60):
        tasks += [asyncio.create_task(batcher.submit(tick * 8 + k)) for k in range(8)]
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(served) + len(refused) == len(results)  # everything answered, one way or the other
    assert refused and served
    assert batcher.standing or batcher.queued == 0
