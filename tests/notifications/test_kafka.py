"""The same pipeline on real Apache Kafka: events in through the transactions outbox and relay, one push
out per device, duplicates (a re-published event) ignored."""

from __future__ import annotations

import pytest

from bank.infra.kafka import KafkaBroker
from shared.config import BankSettings
from shared.db import Database
from shared.events.envelope import Envelope
from tests.notifications.conftest import eventually, running_push


@pytest.mark.kafka
async def test_pushes_over_kafka(db: Database, settings: BankSettings, kafka_broker: KafkaBroker) -> None:
    on_kafka = settings.model_copy(update={"transport": "kafka", "kafka_bootstrap": kafka_broker.bootstrap})
    async with running_push(db, on_kafka) as push:
        ada = push.customer()
        iphone, android = await push.device(ada, "apns"), await push.device(ada, "fcm")
        await push.transaction_event(ada)
        await eventually(
            lambda: len(push.received(status=200)) == 2, timeout=300, what="two pushes over Kafka"
        )
        [row] = await push.rows("SELECT payload FROM transactions.outbox")
        await push.publish_raw(Envelope.from_json(row["payload"]))  # the relay re-publishing
        await push.transaction_event(ada, kind="topup", amount=10_000, merchant=None, balance=14_355)
        await eventually(lambda: len(push.received(status=200)) == 4, timeout=300, what="the top-up")
        assert len(push.received()) == 4
        assert [r.body for r in push.received(token=iphone["token"])] == [
            "☕ £19.15 at Brightbird Espresso. You've spent £43.55 today.",
            "💰 £100.00 top up. Balance £143.55",
        ]
        assert len(push.received(token=android["token"])) == 2
