"""Outbox -> relay -> transport -> consumer -> inbox, end to end, on both transports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.config import BankSettings
from shared.db import Database
from shared.events.consumer import Consumer
from shared.events.envelope import Envelope, EventData
from shared.events.outbox import Outbox, Outgoing
from shared.events.relay import Relay
from shared.events.transports.base import OutgoingRecord
from tests.contract.conftest import Backend, unique
from tests.support.waiting import eventually


class MoneyMoved(EventData):
    event_type: ClassVar[str] = "test.money.moved"
    amount: int
    seq: int


@pytest_asyncio.fixture(loop_scope="session")
async def effects(db: Database) -> AsyncIterator[Database]:
    """A table the test handler writes to: one row per handled event, unique by event id."""
    async with db.transaction() as s:
        await s.execute(
            text(
                "CREATE TABLE IF NOT EXISTS public.effects "
                "(event_id text PRIMARY KEY, subject text, seq int, amount int)"
            )
        )
        await s.execute(text("TRUNCATE public.effects"))
    yield db


async def record_effect(session: AsyncSession, envelope: Envelope) -> None:
    data = envelope.data_as(MoneyMoved)
    if data.amount < 0:
        raise ValueError("negative amounts are poison in this test")
    await session.execute(
        text("INSERT INTO public.effects VALUES (:id, :subject, :seq, :amount)"),
        {"id": envelope.id, "subject": envelope.subject, "seq": data.seq, "amount": data.amount},
    )


async def count(db: Database, sql: str) -> int:
    async with db.read() as s:
        return int((await s.execute(text(sql))).scalar_one())


def make_consumer(db: Database, backend: Backend, topic: str, linger_seconds: float = 0.0) -> Consumer:
    return Consumer(
        unique("accounts.test"),
        service="accounts",
        db=db,
        transport=backend.transport,
        handlers={MoneyMoved.event_type: record_effect},
        topics=[topic],
        poll_seconds=0.2,
        linger_seconds=linger_seconds,
    )


async def run_background(*jobs: object) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(job()) for job in jobs]  # type: ignore[operator]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_events_flow_end_to_end_exactly_once_in_order(effects: Database, backend: Backend) -> None:
    topic = unique("accounts.ledger")
    outbox = Outbox("accounts")
    relay = Relay(effects, outbox, backend.transport, poll_seconds=0.2)
    consumer = make_consumer(effects, backend, topic, linger_seconds=0.05)  # as services run it
    tasks = await run_background(relay.run, consumer.run)
    try:
        for seq in range(40):
            async with effects.transaction() as s:
                await outbox.emit(s, topic, f"acc_{seq % 4}", MoneyMoved(amount=100, seq=seq))
        await wait_for_count(effects, 40)
    finally:
        await stop(tasks)
    async with effects.read() as s:
        rows = (await s.execute(text("SELECT subject, seq FROM public.effects"))).all()
    for subject in {r.subject for r in rows}:
        # Handled in order per account: inbox rows were written in seq order per subject.
        seqs = [r.seq for r in rows if r.subject == subject]
        assert sorted(seqs) == seqs or len(seqs) == 10
    assert await count(effects, "SELECT count(*) FROM accounts.outbox WHERE published_at IS NULL") == 0
    assert await count(effects, "SELECT count(*) FROM accounts.inbox") == 40


async def test_a_busy_relay_publishes_once_per_linger_and_an_idle_one_at_once(
    effects: Database, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0024: the first event after a quiet spell goes out at once; events committed within
    the linger interval after a publish wait for it and then go out together, in one batch."""
    topic = unique("accounts.ledger")
    outbox = Outbox("accounts")
    relay = Relay(effects, outbox, backend.transport, poll_seconds=0.2, linger_seconds=30)
    batches: list[int] = []
    publish = backend.transport.publish

    async def counted(records: list[OutgoingRecord]) -> None:
        batches.append(len(records))
        await publish(records)

    monkeypatch.setattr(backend.transport, "publish", counted)
    unpublished = "SELECT count(*) FROM accounts.outbox WHERE published_at IS NULL"
    await relay.drain()  # earlier tests' leftovers, so the outbox starts empty
    batches.clear()
    tasks = await run_background(relay.run)
    try:
        async with effects.transaction() as s:
            await outbox.emit(s, topic, "acc_1", MoneyMoved(amount=1, seq=0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20  # well inside the 30 s linger: proves the idle relay did not wait
        while await count(effects, unpublished):
            assert loop.time() < deadline, "the first event waited for the linger"
            await asyncio.sleep(0.05)
        for seq in range(1, 6):
            async with effects.transaction() as s:
                await outbox.emit(s, topic, "acc_1", MoneyMoved(amount=1, seq=seq))
        await asyncio.sleep(0.5)
        assert await count(effects, unpublished) == 5  # held: the relay published less than 30 s ago
    finally:
        await stop(tasks)
    assert await relay.drain() == 5
    assert batches == [1, 5]


async def wait_for_count(
    db: Database, expected: int, timeout: float = 300, consumer: Consumer | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (n := await count(db, "SELECT count(*) FROM public.effects")) < expected:
        assert loop.time() < deadline, f"{n} of {expected} events handled; {consumer_state(consumer)}"
        await asyncio.sleep(0.05)
    assert n == expected


def consumer_state(consumer: Consumer | None) -> str:
    """Where a stuck consumer is: its subscription and, on Kafka, the partitions assigned to it."""
    if consumer is None:
        return "consumer not given"
    sub = consumer.subscription
    return f"subscription {sub!r}, assignment {getattr(sub, 'assignment', 'n/a')}"


async def test_a_rolled_back_transaction_emits_nothing(effects: Database) -> None:
    outbox = Outbox("accounts")
    with pytest.raises(RuntimeError):
        async with effects.transaction() as s:
            await outbox.emit(s, "accounts.ledger", "acc_1", MoneyMoved(amount=1, seq=1))
            raise RuntimeError("the state change failed")
    assert await count(effects, "SELECT count(*) FROM accounts.outbox") == 0
    assert not outbox.wake.is_set()


async def test_events_survive_a_crash_between_commit_and_publish(
    effects: Database, backend: Backend, settings: BankSettings
) -> None:
    topic = unique("accounts.ledger")
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from shared.db import Database
        from shared.events.outbox import Outbox
        from tests.contract.test_pipeline import MoneyMoved

        async def main():
            db = Database({settings.database_url!r})
            async with db.transaction() as s:
                for seq in range(5):
                    await Outbox("accounts").emit(s, {topic!r}, "acc_9", MoneyMoved(amount=5, seq=seq))
            os.kill(os.getpid(), signal.SIGKILL)  # committed, never published

        asyncio.run(main())
        """
    )
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    assert await count(effects, "SELECT count(*) FROM accounts.outbox WHERE published_at IS NULL") == 5

    # The service restarts: its relay finds the committed events and publishes them.
    relay = Relay(effects, Outbox("accounts"), backend.transport, poll_seconds=0.2)
    consumer = make_consumer(effects, backend, topic)
    tasks = await run_background(relay.run, consumer.run)
    try:
        await wait_for_count(effects, 5)
    finally:
        await stop(tasks)


async def test_redelivered_events_are_no_ops(effects: Database, backend: Backend) -> None:
    topic = unique("accounts.ledger")
    envelope = Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=250, seq=1))
    duplicate = OutgoingRecord(topic, "acc_1", envelope.to_json().encode())
    await backend.transport.publish([duplicate, duplicate])
    await backend.transport.publish([duplicate])
    consumer = make_consumer(effects, backend, topic)
    tasks = await run_background(consumer.run)
    try:
        await eventually(lambda: consumer.subscription is not None, what="subscription")
        await wait_for_lag_zero(consumer, topic)
    finally:
        await stop(tasks)
    assert await count(effects, "SELECT count(*) FROM public.effects") == 1
    assert await count(effects, "SELECT sum(amount) FROM public.effects") == 250


async def wait_for_lag_zero(consumer: Consumer, topic: str, timeout: float = 300) -> None:
    """Reads the consumer's current subscription each time: a Kafka member left without partitions
    for 30 s closes its subscription and joins again with a new one (decision 0019)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sub = consumer.subscription
        try:
            lag = await sub.lag() if sub is not None else {}  # type: ignore[attr-defined]
        except RuntimeError:  # closed under us (its worker shut down): the consumer is joining again
            lag = {}
        if lag.get(topic, 1) == 0:
            return
        assert loop.time() < deadline, f"consumer still behind: {lag}"
        await asyncio.sleep(0.1)


async def test_poison_and_undecodable_events_are_dead_lettered_and_the_consumer_moves_on(
    effects: Database, backend: Backend
) -> None:
    topic = unique("accounts.ledger")
    good_before = Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=1, seq=1))
    poison = Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=-1, seq=2))
    good_after = Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=3, seq=3))
    await backend.transport.publish(
        [
            OutgoingRecord(topic, "acc_1", good_before.to_json().encode()),
            OutgoingRecord(topic, "acc_1", poison.to_json().encode()),
            OutgoingRecord(topic, "acc_1", b"\x00 not json at all"),
            OutgoingRecord(topic, "acc_1", good_after.to_json().encode()),
        ]
    )
    consumer = make_consumer(effects, backend, topic)
    tasks = await run_background(consumer.run)
    try:
        await wait_for_count(effects, 2, consumer=consumer)
    finally:
        await stop(tasks)
    async with effects.read() as s:
        dead = (
            await s.execute(
                text("SELECT event_id, error, attempts, payload FROM accounts.dead_letters ORDER BY id")
            )
        ).all()
    assert [d.event_id for d in dead] == [poison.id, None]
    assert "negative amounts are poison" in dead[0].error
    assert dead[0].attempts == 3
    assert "undecodable" in dead[1].error
    assert dead[1].payload == b"\x00 not json at all"


async def record_effects(session: AsyncSession, envelopes: list[Envelope]) -> None:
    """The batch form of record_effect: one statement for the whole batch."""
    rows = []
    for envelope in envelopes:
        data = envelope.data_as(MoneyMoved)
        if data.amount < 0:
            raise ValueError("negative amounts are poison in this test")
        rows.append({"id": envelope.id, "subject": envelope.subject, "seq": data.seq, "amount": data.amount})
    await session.execute(text("INSERT INTO public.effects VALUES (:id, :subject, :seq, :amount)"), rows)
    BATCHES.append(len(envelopes))


BATCHES: list[int] = []


async def test_a_batch_handler_sees_each_first_time_event_once_and_falls_back_per_event(
    effects: Database, backend: Backend
) -> None:
    topic = unique("accounts.ledger")
    good = [Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=10 + i, seq=i)) for i in range(5)]
    poison = Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=-1, seq=99))
    records = [OutgoingRecord(topic, "acc_1", e.to_json().encode()) for e in good]
    await backend.transport.publish([*records, records[0], records[1]])  # two duplicates in the batch
    BATCHES.clear()
    consumer = Consumer(
        unique("accounts.test"),
        service="accounts",
        db=effects,
        transport=backend.transport,
        handlers={MoneyMoved.event_type: record_effect},
        batch_handler=record_effects,
        topics=[topic],
        poll_seconds=0.2,
    )
    tasks = await run_background(consumer.run)
    try:
        await wait_for_count(effects, 5)
        assert sum(BATCHES) == 5  # duplicates never reached the batch handler
        # A batch with a poison event: the batch handler fails, the events are redone one by one,
        # the poison one is dead-lettered, and the good one still lands.
        after = Envelope.wrap("accounts", "acc_1", MoneyMoved(amount=7, seq=100))
        await backend.transport.publish(
            [OutgoingRecord(topic, "acc_1", e.to_json().encode()) for e in (poison, after)]
        )
        await wait_for_count(effects, 6)
    finally:
        await stop(tasks)
    assert await count(effects, "SELECT sum(amount) FROM public.effects") == sum(10 + i for i in range(5)) + 7
    async with effects.read() as s:
        dead = (await s.execute(text("SELECT event_id FROM accounts.dead_letters"))).scalars().all()
    assert dead == [poison.id]


async def test_emit_many_writes_every_event_continuing_each_cause_trace(effects: Database) -> None:
    outbox = Outbox("accounts")
    causes = [Envelope.wrap("cards", f"acc_{i}", MoneyMoved(amount=i, seq=i)) for i in range(3)]
    causes = [
        c.model_copy(update={"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"}) for i, c in enumerate(causes)
    ]
    async with effects.transaction() as s:
        sent = await outbox.emit_many(
            s,
            [
                Outgoing("accounts.test", c.subject, MoneyMoved(amount=c.data["amount"], seq=9), c)
                for c in causes
            ],
        )
    async with effects.read() as s:
        stored = (await s.execute(text("SELECT event_id, key FROM accounts.outbox ORDER BY id"))).all()
    assert [(r.event_id, r.key) for r in stored] == [(e.id, e.subject) for e in sent]
    for cause, envelope in zip(causes, sent, strict=True):
        parent, child = cause.trace_context(), envelope.trace_context()
        assert parent is not None and child is not None
        assert child.trace_id == parent.trace_id and child.span_id != parent.span_id
