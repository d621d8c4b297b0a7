"""The feed built from real event transports: the service's own consumer on the Postgres log and on
the real Kafka broker, events out of order and redelivered, announcements published on transactions.feed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bank.infra.kafka import KafkaBroker
from shared import topics
from shared.config import BankSettings
from shared.events import make_transport
from shared.events.envelope import Envelope
from shared.events.transports.base import OutgoingRecord, Transport
from tests.support.waiting import eventually
from tests.transactions.conftest import Feed, Service, start_service
from tests.transactions.events import Authorisation, account_created, at, topup

ACC, USER = "acc_wire", "user_wire"
TIMEOUT = 120.0


@pytest_asyncio.fixture(
    loop_scope="session", params=["pglog", pytest.param("kafka", marks=pytest.mark.kafka)]
)
async def wired(
    request: pytest.FixtureRequest, feed: Feed, settings: BankSettings
) -> AsyncIterator[tuple[Service, Transport]]:
    if request.param == "kafka":
        broker: KafkaBroker = request.getfixturevalue("kafka_broker")
        settings = settings.model_copy(update={"transport": "kafka", "kafka_bootstrap": broker.bootstrap})
    key, identity, app = await start_service(settings)
    publisher = make_transport(settings, client_id="test-publisher")
    await publisher.start()
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            yield Service(feed, key, http), publisher
    finally:
        await publisher.close()
        await asyncio.gather(app.stop(), identity.stop())


async def publish(transport: Transport, topic: str, *events: Envelope) -> None:
    await transport.publish([OutgoingRecord(topic, e.subject, e.to_json().encode()) for e in events])


async def test_the_consumer_builds_the_feed_and_announces_it(wired: tuple[Service, Transport]) -> None:
    service, transport = wired
    coffee = Authorisation(ACC, 1_915)
    approved = coffee.approved(at(1))
    # Out of order and twice: the clearing and the approval before the account is known.
    await publish(transport, topics.CARD_AUTHORISATIONS, coffee.settled(2_000, at(600)), approved, approved)
    await publish(transport, topics.LEDGER, topup(ACC, 5_000, 5_000, at(0)), coffee.hold(3_085, at(1)))
    await publish(transport, topics.ACCOUNTS, account_created(ACC, USER, at(0)))

    async def settled_feed() -> list[dict[str, Any]] | None:
        r = await service.get("/transactions", USER, account_id=ACC, **{"expand[]": "merchant"})
        if r.status_code != 200:
            return None
        items: list[dict[str, Any]] = r.json()["transactions"]
        done = len(items) == 2 and items[1]["settled"] != "" and items[1]["account_balance"] == 3_085
        return items if done else None

    [top_up, payment] = await eventually(settled_feed, TIMEOUT, "the feed to show the settled payment")
    assert (top_up["is_load"], payment["amount"], payment["created"]) == (
        True,
        -2_000,
        "2026-11-26T08:16:00.000Z",
    )

    # What transactions announced reached the transport: subscribe to transactions.feed and read it back.
    sub = await transport.subscribe(f"test-feed-{uuid.uuid4().hex[:6]}", [topics.TRANSACTIONS_FEED])
    seen: dict[str, list[dict[str, Any]]] = {}
    try:

        async def announced() -> bool:
            for record in await sub.poll(500, 0.5):
                event = json.loads(record.value)
                seen.setdefault(event["data"]["transaction"]["id"], []).append(event)
            last = seen.get(payment["id"], [{}])[-1]
            return last.get("data", {}).get("transaction") == payment

        await eventually(announced, TIMEOUT, "the payment's announcement on transactions.feed")
    finally:
        await sub.close()
    types = [e["type"] for e in seen[payment["id"]]]
    assert types[0] == "transaction.created" and types.count("transaction.created") == 1
    assert all(e["subject"] == ACC and e["data"]["user_id"] == USER for e in seen[payment["id"]])
    assert seen[payment["id"]][-1]["data"]["spend_today"] == {"amount": 2_000, "currency": "GBP"}
    rows = await service.feed.rows("SELECT count(*) AS n FROM transactions.dead_letters")
    assert rows[0]["n"] == 0
