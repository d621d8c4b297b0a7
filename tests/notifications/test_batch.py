"""The "push" consumer's batch path (Handlers.on_batch): a whole batch of events written with a constant
number of statements, with the same rows, metrics and wake-ups as the same events one by one; and the
per-event fallback when an event of the batch cannot be handled.

The consumer runner is driven without a transport here (batches are handed to it, as in
tests/transactions/test_batch.py); the last test runs the service end to end on both transports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import text

from services.notifications import repository
from services.notifications.consumers import TRANSACTIONS_TOPIC, WEBHOOKS_TOPIC, Handlers
from services.notifications.observability import NOTIFICATIONS_QUEUED
from services.notifications.sender import Sender
from services.transactions.events import TransactionCreated, TransactionUpdated
from shared.config import BankSettings
from shared.db import Database
from shared.events.envelope import Envelope, EventData
from shared.events.outbox import Outgoing
from shared.ids import new_id
from tests.notifications.conftest import (
    WebhookDisabled,
    eventually,
    running_push,
    transaction,
)
from tests.support.consuming import DrivenConsumer, counting_statements

CONSUMER = "notifications.push-batch-test"
KINDS = ("card_payment", "declined", "topup", "refund", "atm_withdrawal", "reversed", "feed_item")


class CountingSender:
    """Stands in for the Sender: counts the after-commit wake-ups (nothing is sent)."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


class Pipeline(DrivenConsumer):
    """The consumer runner with the service's handlers, with or without its batch handler."""

    def __init__(self, db: Database, batch: bool) -> None:
        self.sender = CountingSender()
        handlers = Handlers(cast(Sender, self.sender))
        super().__init__(
            db, CONSUMER, "notifications", handlers.handlers(), handlers.on_batch if batch else None,
            [TRANSACTIONS_TOPIC, WEBHOOKS_TOPIC], topic_of,
        )  # fmt: skip


def topic_of(e: Envelope) -> str:
    return WEBHOOKS_TOPIC if e.type.startswith("webhook.") else TRANSACTIONS_TOPIC


# -- events ----------------------------------------------------------------------------------------------

_clock = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def wrap(data: EventData, subject: str) -> Envelope:
    """An envelope with its own time (one second apart), so rows show which event queued them."""
    global _clock
    _clock += timedelta(seconds=1)
    return Envelope.wrap("transactions", subject, data).model_copy(update={"time": _clock})


def tx_event(
    user: str, account: str, *, kind: str = "card_payment", change: str = "created", version: int = 1,
    spend: int = 4355, **tx: Any,
) -> Envelope:  # fmt: skip
    body = transaction(account, **tx)
    cls = TransactionCreated if change == "created" else TransactionUpdated
    data = cls(
        account_id=account, user_id=user, kind=kind, change=change, tx_version=version,
        spend_today={"amount": spend, "currency": "GBP"}, transaction=body,
    )  # fmt: skip
    return wrap(data, account)


def disabled(account: str, user: str | None = None, url: str = "https://hooks.example.com/x") -> Envelope:
    named = {"user_id": user} if user else {}
    data = WebhookDisabled.model_validate(
        {"account_id": account, "webhook_id": f"webhook_{account}", "url": url, **named}
    )
    return wrap(data, account)


def acc(user: str) -> str:
    return user.replace("user", "acc")


async def seed_devices(db: Database, devices: dict[str, list[str]]) -> None:
    """Each user's devices, registered in order (`<user>-<n>` tokens)."""
    async with db.transaction() as session:
        for user, platforms in devices.items():
            for n, platform in enumerate(platforms):
                token = f"{n:02d}{user.encode().hex()}" if platform == "apns" else f"fcm-{user}-{n}:APA91b"
                await repository.register_device(session, user, platform, token, None)


async def clear(db: Database) -> None:
    """Everything the consumer writes (the devices stay)."""
    async with db.transaction() as session:
        for table in ("deliveries", "feed_items", "account_owners"):
            await session.execute(text(f"DELETE FROM notifications.{table}"))
        for table in ("inbox", "dead_letters"):
            where = {"c": CONSUMER}
            await session.execute(text(f"DELETE FROM notifications.{table} WHERE consumer = :c"), where)


async def rows(db: Database, sql: str) -> list[dict[str, Any]]:
    async with db.read() as session:
        return [dict(r._mapping) for r in await session.execute(text(sql))]


async def snapshot(db: Database) -> dict[str, Any]:
    """What the consumer stored, feed item ids replaced by their events' ids (they are random)."""
    items = await rows(db, "SELECT * FROM notifications.feed_items ORDER BY source_event_id")
    by_event = {i["id"]: f"<item of {i['source_event_id']}>" for i in items}
    deliveries = []
    for d in await rows(db, "SELECT * FROM notifications.deliveries ORDER BY id"):
        key = d["notification_key"]
        if key.startswith("feed_item:"):
            key = f"feed_item:{by_event[key.removeprefix('feed_item:')]}"
        data = {k: by_event.get(v, v) for k, v in d["data"].items()}
        deliveries.append(
            (key, d["device_id"], d["user_id"], d["account_id"], d["kind"], d["title"], d["body"],
             json.dumps(data, sort_keys=True), d["event_time"], d["status"], d["attempts"])
        )  # fmt: skip
    return {
        "owners": [
            (o["account_id"], o["user_id"])
            for o in await rows(db, "SELECT * FROM notifications.account_owners ORDER BY account_id")
        ],
        "feed_items": [{k: v for k, v in i.items() if k not in ("id", "created")} for i in items],
        "deliveries": deliveries,
    }


def queued_so_far() -> dict[str, float]:
    return {kind: NOTIFICATIONS_QUEUED.labels(kind)._value.get() for kind in KINDS}


def minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


# -- the batch is the events one by one ------------------------------------------------------------------

DEVICES = {
    "user_ada": ["apns", "fcm"], "user_bob": ["fcm"], "user_dan": ["apns"], "user_eve": ["apns"],
    "user_fay": ["fcm", "apns"], "user_gus": ["apns"],
}  # fmt: skip


def mixed_events() -> list[Envelope]:
    """Several users' events, with everything the handlers decide on, in one order."""
    coffee = transaction("acc_ada", tx_id="tx_coffee")
    return [
        tx_event("user_ada", "acc_ada", tx_id=coffee["id"]),
        tx_event("user_bob", "acc_bob", kind="topup", amount=10_000, merchant=None, balance=14_355),
        # The same transaction version again under another event id: one notification (the first's).
        tx_event("user_ada", "acc_ada", tx_id=coffee["id"], spend=9999),
        tx_event("user_ada", "acc_ada", change="settled", version=2, tx_id=coffee["id"]),  # no push
        tx_event("user_bob", "acc_bob", change="reversed", version=3, amount=-700, merchant="Uber"),
        disabled("acc_eve"),  # its owner is named only later in the batch: stored, unpushed
        tx_event("user_eve", "acc_eve", amount=-1200, decline_reason="INSUFFICIENT_FUNDS"),
        tx_event("user_fay", "acc_fay", kind="atm_withdrawal", amount=-5000, merchant="Sainsbury's ATM"),
        disabled("acc_fay"),  # its owner was named by the event before: pushed to fay
        disabled("acc_dan"),  # its owner was stored before the batch: pushed to dan
        disabled("acc_ada", "user_ada", url="https://ada.example.com/hook"),
        tx_event("user_cy", "acc_cy"),  # no device: the owner is stored, nothing queued
        tx_event("user_gus", "acc_gus", change="settled", version=2),  # the owner only
        disabled("acc_nobody"),  # no owner anywhere: stored, unpushed
    ]


async def run(db: Database, events: list[Envelope], *, batch: bool) -> tuple[dict[str, Any], Pipeline]:
    await clear(db)
    async with db.transaction() as session:
        await repository.remember_owner(session, "acc_dan", "user_dan")
    pipeline = Pipeline(db, batch=batch)
    before = queued_so_far()
    await pipeline.consume(events)
    state = await snapshot(db)
    state["queued"] = minus(queued_so_far(), before)
    return state, pipeline


async def test_a_batch_stores_what_its_events_store_one_by_one(db: Database) -> None:
    await seed_devices(db, DEVICES)
    events = mixed_events()
    one_by_one, single = await run(db, events, batch=False)
    batched, whole = await run(db, events, batch=True)
    assert whole.failures == [] and single.failures == []
    assert batched == one_by_one
    assert whole.sender.wakes == 1  # once, after the batch's commit

    # And what that is, in the events' order (the deliveries' ids are the send queue's order).
    ids = [e.id for e in events]
    assert batched["owners"] == [
        ("acc_ada", "user_ada"), ("acc_bob", "user_bob"), ("acc_cy", "user_cy"), ("acc_dan", "user_dan"),
        ("acc_eve", "user_eve"), ("acc_fay", "user_fay"), ("acc_gus", "user_gus"),
    ]  # fmt: skip
    items = {i["source_event_id"]: (i["account_id"], i["user_id"]) for i in batched["feed_items"]}
    assert items == {
        ids[5]: ("acc_eve", None), ids[8]: ("acc_fay", "user_fay"), ids[9]: ("acc_dan", "user_dan"),
        ids[10]: ("acc_ada", "user_ada"), ids[13]: ("acc_nobody", None),
    }  # fmt: skip
    queued = [(d[0], d[2], d[4], d[8]) for d in batched["deliveries"]]
    at = {e.id: e.time for e in events}
    coffee = "transaction:tx_coffee:v1"
    assert [(key, user, kind) for key, user, kind, _ in queued] == [
        (coffee, "user_ada", "card_payment"), (coffee, "user_ada", "card_payment"),
        (queued[2][0], "user_bob", "topup"),
        (queued[3][0], "user_bob", "reversed"),
        (queued[4][0], "user_eve", "declined"),
        (queued[5][0], "user_fay", "atm_withdrawal"), (queued[5][0], "user_fay", "atm_withdrawal"),
        (f"feed_item:<item of {ids[8]}>", "user_fay", "feed_item"),
        (f"feed_item:<item of {ids[8]}>", "user_fay", "feed_item"),
        (f"feed_item:<item of {ids[9]}>", "user_dan", "feed_item"),
        (f"feed_item:<item of {ids[10]}>", "user_ada", "feed_item"),
        (f"feed_item:<item of {ids[10]}>", "user_ada", "feed_item"),
    ]  # fmt: skip
    assert [t for *_, t in queued] == [at[ids[i]] for i in (0, 0, 1, 4, 6, 7, 7, 8, 8, 9, 10, 10)]
    assert batched["deliveries"][0][6] == "☕ £19.15 at Brightbird Espresso. You've spent £43.55 today."
    assert batched["queued"] == {
        "card_payment": 2, "topup": 1, "reversed": 1, "declined": 1, "atm_withdrawal": 2, "feed_item": 5,
    }  # fmt: skip


async def test_redelivered_batches_change_nothing(db: Database) -> None:
    await seed_devices(db, DEVICES)
    events = mixed_events()
    first, pipeline = await run(db, events, batch=True)
    before, wakes = queued_so_far(), pipeline.sender.wakes
    await pipeline.consume(events)  # the whole batch again (the transport redelivers)
    await pipeline.consume(events[3:9])  # and part of it
    fresh = Pipeline(db, batch=True)  # another replica, which has stored no owner itself
    await fresh.consume(events)
    again = await snapshot(db)
    assert again == {k: v for k, v in first.items() if k != "queued"}
    assert queued_so_far() == before
    assert (pipeline.sender.wakes, fresh.sender.wakes) == (wakes, 0)


async def test_a_notification_already_queued_by_an_earlier_batch_is_not_queued_again(db: Database) -> None:
    await seed_devices(db, {"user_ada": ["apns"]})
    await clear(db)
    pipeline = Pipeline(db, batch=True)
    coffee = transaction("acc_ada")
    await pipeline.consume([tx_event("user_ada", "acc_ada", tx_id=coffee["id"])])
    # The same transaction version re-published under new event ids, in a later batch and twice in it.
    copies = [tx_event("user_ada", "acc_ada", tx_id=coffee["id"]) for _ in range(2)]
    await pipeline.consume([*copies, tx_event("user_ada", "acc_ada", kind="topup", merchant=None)])
    keys = [d[0] for d in (await snapshot(db))["deliveries"]]
    assert keys == [f"transaction:{coffee['id']}:v1", keys[1]] and keys[1] != keys[0]
    assert pipeline.sender.wakes == 2


# -- a constant number of statements ---------------------------------------------------------------------


def many_events(n: int) -> list[Envelope]:
    users = [f"user_many{i}" for i in range(7)]
    events = []
    for i in range(n):
        user = users[i % len(users)]
        if i % 5 == 4:
            events.append(disabled(acc(user)))  # the owner looked up (named earlier or stored)
        elif i % 5 == 3:
            events.append(tx_event(user, acc(user), change="settled", version=2))
        else:
            events.append(tx_event(user, acc(user), amount=-(100 + i)))
    return events


async def statements_for(db: Database, n: int) -> tuple[list[str], int]:
    await clear(db)
    pipeline = Pipeline(db, batch=True)
    with counting_statements(db) as statements:
        await pipeline.consume(many_events(n))
    assert pipeline.failures == []
    [count] = await rows(db, "SELECT count(*) AS n FROM notifications.deliveries")
    return statements, count["n"]


async def test_the_statements_per_batch_do_not_grow_with_the_batch(db: Database) -> None:
    await seed_devices(db, {f"user_many{i}": ["apns", "fcm"] for i in range(7)})
    small, queued_small = await statements_for(db, 5)
    large, queued_large = await statements_for(db, 50)
    assert 0 < queued_small < queued_large
    # The inbox, the stored owners read (a disabled webhook names none), and one write.
    assert len(small) == len(large) == 3, large
    only_payments = [tx_event(f"user_many{i % 7}", acc(f"user_many{i % 7}")) for i in range(50)]
    await clear(db)
    with counting_statements(db) as statements:
        await Pipeline(db, batch=True).consume(only_payments)
    assert len(statements) == 2  # the inbox and one write


# -- the per-event fallback ------------------------------------------------------------------------------


async def test_an_event_the_batch_cannot_handle_is_dead_lettered_and_the_rest_lands(db: Database) -> None:
    await seed_devices(db, {"user_ada": ["apns"], "user_bob": ["fcm"]})
    events = [
        tx_event("user_ada", "acc_ada"),
        wrap(
            WebhookDisabled.model_validate({"account_id": "acc_ada", "user_id": "user_ada"}), "acc_ada"
        ),  # no url, no webhook id
        tx_event("user_bob", "acc_bob", kind="topup", merchant=None),
    ]
    await clear(db)
    pipeline = Pipeline(db, batch=True)
    await pipeline.consume(events)
    assert len(pipeline.failures) == 1  # the batch path raised; the runner redid the batch event by event
    dead = await rows(db, "SELECT event_id, attempts, consumer FROM notifications.dead_letters")
    assert [(d["event_id"], d["attempts"], d["consumer"]) for d in dead] == [(events[1].id, 3, CONSUMER)]
    state = await snapshot(db)
    assert [(d[2], d[4]) for d in state["deliveries"]] == [
        ("user_ada", "card_payment"), ("user_bob", "topup"),
    ]  # fmt: skip
    assert state["owners"] == [("acc_ada", "user_ada"), ("acc_bob", "user_bob")]
    assert pipeline.sender.wakes == 1


# -- end to end, on both transports ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["pglog", pytest.param("kafka", marks=pytest.mark.kafka)])
async def test_events_published_together_push_once_each(
    db: Database, settings: BankSettings, transport: str, request: pytest.FixtureRequest
) -> None:
    if transport == "kafka":
        bootstrap = request.getfixturevalue("kafka_broker").bootstrap
        settings = settings.model_copy(update={"transport": "kafka", "kafka_bootstrap": bootstrap})
    async with running_push(db, settings) as push:
        customers = [push.customer() for _ in range(4)]
        phones = {c.user_id: await push.device(c, "apns") for c in customers}
        outgoing = []
        for n in range(20):
            who = customers[n % 4]
            body = transaction(who.account_id, amount=-(100 + n), tx_id=f"tx_together_{n}_{new_id('x')}")
            data = TransactionCreated(
                account_id=who.account_id, user_id=who.user_id, kind="card_payment", change="created",
                tx_version=1, spend_today={"amount": 100, "currency": "GBP"}, transaction=body,
            )  # fmt: skip
            outgoing.append(Outgoing(TRANSACTIONS_TOPIC, who.account_id, data))
        async with db.transaction() as session:
            await push.outbox.emit_many(session, outgoing)
        await push.relay.drain()
        await eventually(lambda: len(push.received(status=200)) == 20, timeout=300, what="twenty pushes")
        # The relay re-publishes some of them (a crash between publish and mark): nothing more is sent.
        for row in (await push.rows("SELECT payload FROM transactions.outbox ORDER BY id"))[:5]:
            await push.publish_raw(Envelope.from_json(row["payload"]))
        marker = customers[0]
        await push.transaction_event(marker, kind="topup", amount=100, merchant=None)
        await eventually(lambda: len(push.received(status=200)) == 21, timeout=300, what="the marker push")
        assert len(push.received()) == 21
        for c in customers:
            bodies = {r.body for r in push.received(token=phones[c.user_id]["token"])}
            assert len(bodies) == (6 if c is marker else 5)
        assert len(await push.deliveries()) == 21
