"""The "deliveries" consumer's batch path (DeliveryHandlers.on_batch): a whole batch of feed events
becomes its deliveries in one statement, the same rows in the same order as the events one by one; a
redelivered batch adds nothing.

The consumer runner is driven without a transport here (batches are handed to it, as in
tests/transactions/test_batch.py); the last test runs the service end to end on both transports."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import text

from services.transactions.events import TransactionCreated, TransactionUpdated
from services.webhooks.consumers import DeliveryHandlers, body_of
from services.webhooks.delivery import Deliverer
from services.webhooks.events import FEED_TOPIC
from shared.db import Database
from shared.events.envelope import Envelope
from shared.events.outbox import Outgoing
from shared.events.transports.base import OutgoingRecord
from tests.support.consuming import DrivenConsumer, counting_statements
from tests.support.waiting import eventually
from tests.webhooks.conftest import (
    FEED,
    Hooks,
    Receiver,
    mondo_transaction,
)

CONSUMER = "webhooks.deliveries-batch-test"


class WakeOnly:
    """Stands in for the Deliverer: its wake-up event (nothing is sent)."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()


class Pipeline(DrivenConsumer):
    """The consumer runner with the service's handlers, with or without its batch handler."""

    def __init__(self, db: Database, batch: bool) -> None:
        self.deliverer = WakeOnly()
        handlers = DeliveryHandlers(cast(Deliverer, self.deliverer))
        batch_handler = handlers.on_batch if batch else None
        super().__init__(db, CONSUMER, "webhooks", handlers.handlers(), batch_handler, [FEED_TOPIC])


_clock = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def feed_event(account: str, *, updated: bool = False, tx: dict[str, Any] | None = None) -> Envelope:
    global _clock
    _clock += timedelta(seconds=1)
    tx = tx or mondo_transaction(account)
    model = TransactionUpdated if updated else TransactionCreated
    data = model.model_validate(
        {
            "account_id": account, "user_id": account.replace("acc", "user"), "kind": "card_payment",
            "change": "settled" if updated else "created", "tx_version": 2 if updated else 1,
            "spend_today": {"amount": 1915, "currency": "GBP"}, "transaction": tx,
        }
    )  # fmt: skip
    return Envelope.wrap("transactions", account, data).model_copy(update={"time": _clock})


# Accounts and their webhooks, registered in this order: statuses other than active get nothing.
WEBHOOKS = [
    ("webhook_a1", "acc_a", "active"), ("webhook_a2", "acc_a", "active"),
    ("webhook_b1", "acc_b", "active"), ("webhook_c1", "acc_c", "disabled"),
    ("webhook_d1", "acc_d", "deleted"), ("webhook_d2", "acc_d", "active"),
]  # fmt: skip


async def seed_webhooks(db: Database, webhooks: Sequence[tuple[str, str, str]]) -> None:
    async with db.transaction() as session:
        for n, (webhook_id, account, status) in enumerate(webhooks):
            await session.execute(
                text(
                    "INSERT INTO webhooks.webhooks (id, account_id, user_id, url, secret, status, created)"
                    " VALUES (:id, :account, :user, 'https://hooks.example.com/x', '\\x00', :status,"
                    " now() - make_interval(secs => :age))"
                ),
                {"id": webhook_id, "account": account, "user": account.replace("acc", "user"),
                 "status": status, "age": 1000 - n},
            )  # fmt: skip


async def clear(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text("DELETE FROM webhooks.deliveries"))
        for table in ("inbox", "dead_letters"):
            where = {"c": CONSUMER}
            await session.execute(text(f"DELETE FROM webhooks.{table} WHERE consumer = :c"), where)


async def deliveries(db: Database) -> list[dict[str, Any]]:
    async with db.read() as session:
        rows = await session.execute(text("SELECT * FROM webhooks.deliveries ORDER BY seq"))
        return [dict(r._mapping) for r in rows]


def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows in `seq` order (the claim's), without their random ids and sequence numbers."""
    return [
        (r["webhook_id"], r["account_id"], r["event_id"], r["event_type"], r["event_time"], r["payload"],
         r["status"], r["attempts"], r["retry_base"], r["lease_until"])
        for r in rows
    ]  # fmt: skip


def mixed_events() -> list[Envelope]:
    coffee = mondo_transaction("acc_a")
    return [
        feed_event("acc_a", tx=coffee),
        feed_event("acc_b"),
        feed_event("acc_c"),  # its only webhook is disabled
        feed_event("acc_d"),  # one deleted, one active
        feed_event("acc_e"),  # no webhook
        feed_event("acc_a", updated=True, tx={**coffee, "settled": "2026-11-27T08:00:00Z"}),
        feed_event("acc_b"),
    ]


async def run(db: Database, events: list[Envelope], *, batch: bool) -> tuple[list[dict[str, Any]], Pipeline]:
    await clear(db)
    pipeline = Pipeline(db, batch=batch)
    await pipeline.consume(events)
    assert pipeline.failures == []
    return await deliveries(db), pipeline


async def test_a_batch_adds_the_deliveries_its_events_add_one_by_one(db: Database) -> None:
    await seed_webhooks(db, WEBHOOKS)
    events = mixed_events()
    one_by_one, _ = await run(db, events, batch=False)
    batched, pipeline = await run(db, events, batch=True)
    assert comparable(batched) == comparable(one_by_one)
    assert pipeline.deliverer.wake.is_set()  # after the commit

    ids = [e.id for e in events]
    assert [(r["webhook_id"], r["event_id"]) for r in batched] == [
        ("webhook_a1", ids[0]), ("webhook_a2", ids[0]), ("webhook_b1", ids[1]), ("webhook_d2", ids[3]),
        ("webhook_a1", ids[5]), ("webhook_a2", ids[5]), ("webhook_b1", ids[6]),
    ]  # fmt: skip
    assert all(r["event_time"] == e.time for r in batched for e in events if e.id == r["event_id"])
    assert batched[4]["payload"] == body_of("transaction.updated", events[5].data["transaction"])
    assert all(re.fullmatch(r"msg_[0-9A-Z]{26}", r["id"]) for r in batched)
    assert len({r["id"] for r in batched}) == len(batched)


async def test_a_redelivered_batch_adds_nothing(db: Database) -> None:
    await seed_webhooks(db, WEBHOOKS)
    events = mixed_events()
    first, pipeline = await run(db, events, batch=True)
    pipeline.deliverer.wake.clear()
    await pipeline.consume(events)
    await pipeline.consume([events[1], events[5]])
    await Pipeline(db, batch=True).consume(events)  # another replica
    assert await deliveries(db) == first
    assert not pipeline.deliverer.wake.is_set()


async def test_a_batch_for_accounts_without_webhooks_wakes_nobody(db: Database) -> None:
    await seed_webhooks(db, WEBHOOKS)
    events = [feed_event("acc_c"), feed_event("acc_e")]
    rows, pipeline = await run(db, events, batch=True)
    assert rows == [] and not pipeline.deliverer.wake.is_set()


async def test_the_statements_per_batch_do_not_grow_with_the_batch(db: Database) -> None:
    await seed_webhooks(db, WEBHOOKS)
    accounts = ["acc_a", "acc_b", "acc_c", "acc_d", "acc_e"]
    counted = {}
    for n in (5, 50):
        await clear(db)
        with counting_statements(db) as statements:
            await Pipeline(db, batch=True).consume([feed_event(accounts[i % 5]) for i in range(n)])
        counted[n] = (len(statements), len(await deliveries(db)))
    assert counted == {5: (2, 4), 50: (2, 40)}  # the inbox and the deliveries; 4 webhooks per 5 events


async def test_an_event_the_batch_cannot_read_is_dead_lettered_and_the_rest_delivered(db: Database) -> None:
    await seed_webhooks(db, WEBHOOKS)
    good, other = feed_event("acc_a"), feed_event("acc_b")
    poison = feed_event("acc_b")
    poison = poison.model_copy(update={"data": {k: v for k, v in poison.data.items() if k != "transaction"}})
    await clear(db)
    pipeline = Pipeline(db, batch=True)
    await pipeline.consume([good, poison, other])
    assert len(pipeline.failures) == 1  # the batch path raised; the runner redid it event by event
    async with db.read() as session:
        dead = (await session.execute(text("SELECT event_id, consumer FROM webhooks.dead_letters"))).all()
    assert [tuple(d) for d in dead] == [(poison.id, CONSUMER)]
    rows = await deliveries(db)
    assert [(r["webhook_id"], r["event_id"]) for r in rows] == [
        ("webhook_a1", good.id), ("webhook_a2", good.id), ("webhook_b1", other.id),
    ]  # fmt: skip
    assert pipeline.deliverer.wake.is_set()


# -- end to end, on both transports ----------------------------------------------------------------------


async def test_events_published_together_are_delivered_once_each(
    hooks_on_both: Hooks, receivers: Any
) -> None:
    hooks = hooks_on_both
    customers = [await hooks.customer(name=f"Customer {n}") for n in range(3)]
    inboxes: list[Receiver] = []
    for c in customers:
        inboxes.append(await receivers())
        await hooks.register(c, inboxes[-1].url)
    outgoing, sent = [], []
    for n in range(15):
        who = customers[n % 3]
        tx = mondo_transaction(who.account_id)
        sent.append(tx["id"])
        data = TransactionCreated.model_validate(
            {"account_id": who.account_id, "user_id": who.user_id, "kind": "card_payment",
             "change": "created", "tx_version": 1, "spend_today": {"amount": 1915, "currency": "GBP"},
             "transaction": tx}
        )  # fmt: skip
        outgoing.append(Outgoing(FEED, who.account_id, data))
    async with hooks.db.transaction() as session:
        await hooks.producer.outbox.emit_many(session, outgoing)
    await hooks.producer.relay.drain()
    await eventually(lambda: sum(len(r.requests) for r in inboxes) == 15, what="fifteen deliveries")
    # The relay re-publishes some (a crash between publish and mark), then a marker event.
    async with hooks.db.read() as session:
        payloads = (await session.execute(text("SELECT payload FROM transactions.outbox ORDER BY id"))).all()
    republished = [Envelope.from_json(p[0]) for p in payloads[:5]]
    await hooks.transport.publish(
        [OutgoingRecord(FEED, e.subject, e.to_json().encode()) for e in republished]
    )
    marker = await hooks.producer.emit(customers[0])

    def marker_seen() -> bool:
        return any(r.json()["data"]["id"] == marker["id"] for r in inboxes[0].requests)

    await eventually(marker_seen, what="the marker's delivery")
    for n, inbox in enumerate(inboxes):
        got = [r.json()["data"]["id"] for r in inbox.requests if r.json()["data"]["id"] != marker["id"]]
        assert sorted(got) == sorted(sent[n::3])
    rows = await hooks.rows("SELECT count(*) AS n FROM webhooks.deliveries")
    assert rows == [{"n": 16}]
