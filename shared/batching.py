"""Natural batching: whatever queues while one batch is in flight becomes the next batch.

No timer: a lone item starts a batch of one at once, so latency at low load does not grow; under
load a batch takes everything that arrived during the last one, so the cost per item of a round
trip, a transaction or a commit falls as the load rises (TigerBeetle's batching, decision 0030).
One batch is in flight at a time per batcher.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Handler = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class NaturalBatcher(Generic[T, R]):
    """`submit(item)` answers with what `handle(batch)` gave for that item: a value, or an exception
    raised to that item's caller alone. If `handle` itself raises, every item of the batch gets it."""

    def __init__(self, handle: Handler[T, R], *, max_size: int) -> None:
        self._handle = handle
        self.max_size = max_size
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._worker is None or self._worker.done():
            # A context of its own: the first caller's deadline and trace must not follow the worker
            # into later batches.
            self._worker = loop.create_task(self._run(), context=contextvars.Context())
        return await future

    async def _run(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_size]
            del self._queue[: self.max_size]
            live = [(item, future) for item, future in batch if not future.done()]  # callers gone: dropped
            if live:
                await self._answer(live)

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
