"""Natural batching: whatever queues while one batch is in flight becomes the next batch.

No timer: a lone item starts a batch of one at once, so latency at low load does not grow; under
load a batch takes everything that arrived during the last one, so the cost per item of a round
trip, a transaction or a commit falls as the load rises (TigerBeetle's batching, decision 0030).
One batch is in flight at a time per batcher.

Past capacity the queue would grow without bound and every item would wait longer than its caller
(decision 0036). So a batch is sized to finish within `budget` seconds, from the time items have
been taking, and once a queue stands (every batch for `standing_after` seconds has left items
behind: overload, not a burst that drains) an item that has waited longer than `overload_wait` is
refused with `shed(item)` rather than worked on. The items served are fresh, and the work done is
work whose answer is still wanted (CoDel's idea, with the batch as the unit of service).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Handler = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]
MIN_CAP = 8  # a batch is never capped below this: at small sizes the fixed costs dominate
SMOOTHING = 0.2  # weight of the newest batch in the seconds-per-item estimate


class NaturalBatcher(Generic[T, R]):
    """`submit(item)` answers with what `handle(batch)` gave for that item: a value, or an exception
    raised to that item's caller alone. If `handle` itself raises, every item of the batch gets it."""

    def __init__(
        self,
        handle: Handler[T, R],
        *,
        max_size: int,
        budget: float | None = None,
        overload_wait: float | None = None,
        standing_after: float = 0.5,
        shed: Callable[[T], Exception] | None = None,
    ) -> None:
        self._handle = handle
        self.max_size = max_size
        self.budget = budget
        self.overload_wait = overload_wait
        self.standing_after = standing_after
        self._shed = shed
        self._queue: deque[tuple[T, asyncio.Future[R], float]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self.seconds_per_item: float | None = None  # measured on batches of at least MIN_CAP
        self._backlog_since: float | None = None  # since when every batch has left items behind

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def standing(self) -> bool:
        since = self._backlog_since
        return since is not None and time.monotonic() - since > self.standing_after

    @property
    def cap(self) -> int:
        """The most items the next batch takes: what fits in the budget, as items have been costing."""
        if self.budget is None or not self.seconds_per_item:
            return self.max_size
        return max(MIN_CAP, min(self.max_size, int(self.budget / self.seconds_per_item)))

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future, time.monotonic()))
        if self._worker is None or self._worker.done():
            # A context of its own: the first caller's deadline and trace must not follow the worker
            # into later batches.
            self._worker = loop.create_task(self._run(), context=contextvars.Context())
        return await future

    async def _run(self) -> None:
        while self._queue:
            if self.standing:
                self._shed_stale()
            live = self._take(self.cap)
            if not live:
                continue
            began = time.monotonic()
            await self._answer(live)
            if len(live) >= MIN_CAP:
                per_item = (time.monotonic() - began) / len(live)
                last = self.seconds_per_item
                self.seconds_per_item = per_item if last is None else last + SMOOTHING * (per_item - last)

    def _take(self, cap: int) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch: up to `cap` items whose callers still wait; notes whether a queue stands."""
        live: list[tuple[T, asyncio.Future[R]]] = []
        while self._queue and len(live) < cap:
            item, future, _ = self._queue.popleft()
            if not future.done():  # callers gone: dropped
                live.append((item, future))
        if not self._queue:
            self._backlog_since = None
        elif self._backlog_since is None:
            self._backlog_since = time.monotonic()
        return live

    def _shed_stale(self) -> None:
        if self.overload_wait is None or self._shed is None:
            return
        oldest_allowed = time.monotonic() - self.overload_wait
        while self._queue and self._queue[0][2] < oldest_allowed:
            item, future, _ = self._queue.popleft()
            if not future.done():
                future.set_exception(self._shed(item))

    async def _answer(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._handle([item for item, _ in live])
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
