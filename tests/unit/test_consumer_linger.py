"""The consumer's poll loop with a linger (decision 0028), against a scripted subscription: when it
waits before polling, and when it does not. Delivery itself is the transports' contract
(tests/contract); this is the loop's own rule."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from shared.db import Database
from shared.events.consumer import Consumer
from shared.events.transports.base import IncomingRecord


class ScriptEnded(Exception):
    pass


class ScriptedSubscription:
    """Answers each poll with the next scripted batch and writes what happens to a shared log."""

    def __init__(self, batches: list[list[str]], log: list[object]) -> None:
        self.batches = deque(batches)
        self.log = log

    async def poll(self, max_records: int = 500, timeout: float = 0.5) -> list[IncomingRecord]:
        if not self.batches:
            raise ScriptEnded
        batch = self.batches.popleft()
        self.log.append(("poll", batch))
        return [IncomingRecord("t", 0, i, "k", name.encode()) for i, name in enumerate(batch)]

    async def commit(self, records: list[IncomingRecord]) -> None:
        self.log.append(("commit", [r.value.decode() for r in records]))

    async def lag(self) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        pass


async def run_script(batches: list[list[str]], *, linger: float, batch_size: int = 10) -> list[object]:
    """The loop's log over the script: polls, handled batches, commits, and lingers (rounded up to
    the interval they were asked to wait within)."""
    log: list[object] = []
    # Never connects: the handler is replaced below, and nothing else here touches the database.
    db = Database("postgresql://nobody@127.0.0.1:9/none")
    consumer = Consumer(
        "test.linger", service="test", db=db, transport=None,  # type: ignore[arg-type]
        handlers={}, topics=["t"], batch_size=batch_size, linger_seconds=linger,
    )  # fmt: skip

    async def handle(records: list[IncomingRecord]) -> None:
        log.append(("handle", [r.value.decode() for r in records]))

    async def linger_for(seconds: float) -> None:
        assert 0 < seconds <= linger
        log.append("linger")
        await asyncio.sleep(seconds)

    consumer.handle_batch_until_done = handle  # type: ignore[method-assign]
    consumer._linger = linger_for  # type: ignore[method-assign]
    with pytest.raises(ScriptEnded):
        await consumer._loop(ScriptedSubscription(batches, log))
    await db.dispose()
    return log


async def test_the_first_records_after_a_quiet_spell_are_handled_at_once() -> None:
    log = await run_script([["a"]], linger=0.05)
    assert log == [("poll", ["a"]), ("handle", ["a"]), ("commit", ["a"]), "linger"]


async def test_after_a_batch_the_next_poll_waits_out_the_linger() -> None:
    log = await run_script([["a"], ["b", "c"], ["d"]], linger=0.05)
    assert log == [
        ("poll", ["a"]), ("handle", ["a"]), ("commit", ["a"]),
        "linger",
        ("poll", ["b", "c"]), ("handle", ["b", "c"]), ("commit", ["b", "c"]),
        "linger",
        ("poll", ["d"]), ("handle", ["d"]), ("commit", ["d"]),
        "linger",
    ]  # fmt: skip


async def test_a_full_batch_means_a_backlog_so_the_next_poll_does_not_wait() -> None:
    log = await run_script([["a", "b"], ["c"]], linger=0.05, batch_size=2)
    assert log == [
        ("poll", ["a", "b"]), ("handle", ["a", "b"]), ("commit", ["a", "b"]),
        ("poll", ["c"]), ("handle", ["c"]), ("commit", ["c"]),
        "linger",
    ]  # fmt: skip


async def test_an_empty_poll_handles_nothing_and_adds_no_linger() -> None:
    log = await run_script([["a"], [], ["b"]], linger=0.05)
    assert log == [
        ("poll", ["a"]), ("handle", ["a"]), ("commit", ["a"]),
        "linger",
        ("poll", []),
        ("poll", ["b"]), ("handle", ["b"]), ("commit", ["b"]),
        "linger",
    ]  # fmt: skip


async def test_without_a_linger_the_loop_never_waits() -> None:
    log = await run_script([["a"], ["b"]], linger=0.0)
    assert "linger" not in log
    assert [e for e in log if isinstance(e, tuple) and e[0] == "handle"] == [
        ("handle", ["a"]),
        ("handle", ["b"]),
    ]
