"""One contract, two transports: every test here runs on the Postgres log and on real Kafka."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bank.infra.kafka import KafkaBroker
from bank.infra.postgres import EmbeddedPostgres
from shared.config import BankSettings
from shared.db import Database
from shared.events.transports.base import IncomingRecord, OutgoingRecord, Subscription, Transport
from shared.events.transports.kafka import KafkaTransport
from shared.events.transports.pglog import PgLogTransport


@dataclass
class Backend:
    """A transport under test, and a way to stop and restart whatever it runs on."""

    name: str
    transport: Transport
    stop: Callable[[], None]
    start: Callable[[], None]

    def new_transport(self) -> Transport:
        if isinstance(self.transport, KafkaTransport):
            return KafkaTransport(self.transport.bootstrap, client_id=f"test-{uuid.uuid4().hex[:6]}")
        assert isinstance(self.transport, PgLogTransport)
        return PgLogTransport(self.transport.dsn, member_ttl=self.transport.member_ttl)


@pytest_asyncio.fixture(
    loop_scope="session", params=["pglog", pytest.param("kafka", marks=pytest.mark.kafka)]
)
async def backend(
    request: pytest.FixtureRequest, settings: BankSettings, db: Database, pg_server: EmbeddedPostgres
) -> AsyncIterator[Backend]:
    if request.param == "kafka":
        broker: KafkaBroker = request.getfixturevalue("kafka_broker")
        transport: Transport = KafkaTransport(broker.bootstrap, client_id="contract")
        backend = Backend("kafka", transport, broker.stop, broker.start)
    else:
        transport = PgLogTransport(settings.database_url, member_ttl=3.0)
        backend = Backend("pglog", transport, lambda: pg_server.stop("immediate"), pg_server.start)
    await transport.start()
    yield backend
    await transport.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def record(topic: str, key: str, seq: int) -> OutgoingRecord:
    return OutgoingRecord(topic, key, json.dumps({"key": key, "seq": seq}).encode())


def decode(r: IncomingRecord) -> tuple[str, int]:
    doc = json.loads(r.value)
    return doc["key"], doc["seq"]


async def consume(
    sub: Subscription, count: int, *, timeout: float = 60.0, commit: bool = True
) -> list[IncomingRecord]:
    """Poll until `count` records arrived (or fail after `timeout`)."""
    got: list[IncomingRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} records arrived in {timeout}s"
        batch = await sub.poll(500, 0.5)
        got.extend(batch)
        if commit:
            await sub.commit(batch)
    return got
