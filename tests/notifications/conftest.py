"""The notifications service on a real socket, a stub of accounts, and the fake APNs/FCM provider.

Events are produced as the transactions service would: `Outbox("transactions").emit` in a committed
transaction, then its `Relay` publishes them on the transport the service consumes from.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import pytest_asyncio
from sqlalchemy import text

from bank.infra.ports import free_port
from services.notifications.app import create_app
from services.notifications.config import NotificationsSettings
from services.notifications.providers.fake import FakeServer
from services.transactions.events import TransactionCreated, TransactionUpdated
from shared import topics
from shared.auth import INTERNAL_TOKEN_HEADER, SigningKey
from shared.config import BankSettings
from shared.db import Database
from shared.events import make_transport
from shared.events.envelope import Envelope, EventData
from shared.events.outbox import Outbox
from shared.events.relay import Relay
from shared.events.transports.base import OutgoingRecord, Transport
from shared.ids import new_id
from shared.runtime import Runtime
from tests.support import waiting
from tests.support.accounts import StubAccounts
from tests.support.serving import Served

INTERNAL_TOKEN = "test-internal-token"
TRANSACTIONS_TOPIC = topics.TRANSACTIONS_FEED
WEBHOOKS_TOPIC = topics.WEBHOOK_ENDPOINTS


class WebhookDisabled(EventData):
    event_type: ClassVar[str] = "webhook.endpoint.disabled"


def transaction(
    account_id: str,
    *,
    amount: int = -1915,
    currency: str = "GBP",
    merchant: str | None = "Brightbird Espresso",
    emoji: str = "☕",
    decline_reason: str | None = None,
    balance: int = 10_000,
    tx_id: str | None = None,
) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "id": tx_id or new_id("tx"),
        "account_id": account_id,
        "amount": amount,
        "currency": currency,
        "created": datetime.now(UTC).isoformat(),
        "description": (merchant or "TOP UP").upper(),
        "merchant": {"id": new_id("merch"), "name": merchant, "emoji": emoji} if merchant else None,
        "account_balance": balance,
        "settled": "",
        "category": "eating_out",
        "notes": "",
        "metadata": {},
    }
    if decline_reason:
        tx["decline_reason"] = decline_reason
    return tx


@dataclass
class Customer:
    user_id: str
    account_id: str


@dataclass
class Push:
    """The running notifications service and everything around it."""

    db: Database
    key: SigningKey
    owners: dict[str, str]
    fake: FakeServer
    bank_settings: BankSettings
    settings: NotificationsSettings
    transport: Transport
    relay: Relay
    outbox: Outbox = field(default_factory=lambda: Outbox("transactions"))
    server: Served | None = None
    replicas: list[Served] = field(default_factory=list)
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30))

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self, **overrides: Any) -> Served:
        """Start a replica (another one if one runs already); `url` is the newest one's."""
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        server = Served(create_app(Runtime("notifications", self.bank_settings), settings))
        await server.start()
        self.server = server
        self.replicas.append(server)
        return server

    async def stop(self) -> None:
        """Stop every replica started: one left running would go on claiming the next test's pushes."""
        for server in self.replicas:
            await server.stop()
        self.replicas.clear()

    def customer(self) -> Customer:
        customer = Customer(new_id("user"), new_id("acc"))
        self.owners[customer.account_id] = customer.user_id
        return customer

    def auth(self, who: Customer | str) -> dict[str, str]:
        user_id = who if isinstance(who, str) else who.user_id
        return {"Authorization": f"Bearer {self.key.issue(user_id, 'oauthclient_test', 3600)[0]}"}

    async def device(self, who: Customer, platform: str = "apns", token: str | None = None) -> dict[str, Any]:
        token = token or (uuid.uuid4().hex * 2 if platform == "apns" else f"fcm-{uuid.uuid4().hex}:APA91b")
        r = await self.http.post(
            f"{self.url}/devices", data={"platform": platform, "token": token}, headers=self.auth(who)
        )
        assert r.status_code == 201, r.text
        device: dict[str, Any] = r.json()["device"]
        return device

    async def emit(self, data: EventData, subject: str, topic: str = TRANSACTIONS_TOPIC) -> None:
        """Produce as a service does: outbox row in a committed transaction, then the relay publishes."""
        async with self.db.transaction() as session:
            await self.outbox.emit(session, topic, subject, data)
        await self.relay.drain()

    async def transaction_event(
        self,
        who: Customer,
        *,
        kind: str = "card_payment",
        spend: int = 4355,
        change: str = "created",
        version: int = 1,
        **tx: Any,
    ) -> dict[str, Any]:
        body = transaction(who.account_id, **tx)
        cls = TransactionCreated if change == "created" else TransactionUpdated
        data = cls(
            account_id=who.account_id,
            user_id=who.user_id,
            kind=kind,
            change=change,
            tx_version=version,
            spend_today={"amount": spend, "currency": body["currency"]},
            transaction=body,
        )
        await self.emit(data, who.account_id)
        return body

    async def publish_raw(self, envelope: Envelope, topic: str = TRANSACTIONS_TOPIC) -> None:
        """Publish an envelope on the transport as is (a relay re-publishing after a crash)."""
        await self.transport.publish([OutgoingRecord(topic, envelope.subject, envelope.to_json().encode())])

    def received(self, **match: object) -> list[Any]:
        return [r for r in self.fake.fake.received if all(getattr(r, k) == v for k, v in match.items())]

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            return [dict(r._mapping) for r in await session.execute(text(sql), params)]

    async def settled(self) -> None:
        """Wait until no delivery is pending (the provider may answer before the worker commits)."""

        async def done() -> bool:
            return not await self.rows("SELECT 1 FROM notifications.deliveries WHERE status = 'pending'")

        await eventually(done, what="every delivery settled")

    async def deliveries(self, **where: str) -> list[dict[str, Any]]:
        cond = " AND ".join(f"{k} = :{k}" for k in where) or "true"
        return await self.rows(f"SELECT * FROM notifications.deliveries WHERE {cond} ORDER BY id", **where)


# A loaded 2-core machine is slow, never wrong: the push tests wait up to three minutes.
eventually = functools.partial(waiting.eventually, timeout=180.0)


def push_settings(fake_url: str, **overrides: Any) -> NotificationsSettings:
    values: dict[str, Any] = {
        "apns_url": fake_url,
        "fcm_url": fake_url,
        "fcm_token_uri": f"{fake_url}/token",
        "fcm_project_id": "bank-test",
        "poll_seconds": 0.05,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.05,
        "retry_after_max_seconds": 0.05,
        "max_attempts": 4,
        "provider_timeout_seconds": 30.0,
        "send_concurrency": 4,
        "jwks_min_refresh_seconds": 0.0,
        "revocation_poll_seconds": 0.2,
        **overrides,
    }
    return NotificationsSettings(**values)


@asynccontextmanager
async def running_push(db: Database, settings: BankSettings, *, start: bool = True) -> AsyncIterator[Push]:
    stub = StubAccounts()  # what notifications reads of accounts: the JWKS, revocations, account owners
    key, owners = stub.key, stub.owners
    accounts = Served(stub.app())
    fake = FakeServer(free_port())
    await asyncio.gather(accounts.start(), fake.start())
    bank_settings = settings.model_copy(
        update={"accounts_url": accounts.url, "internal_token": INTERNAL_TOKEN}
    )
    transport = make_transport(bank_settings, client_id="tests-producer")
    await transport.start()
    outbox = Outbox("transactions")
    relay = Relay(db, outbox, transport)
    push = Push(db, key, owners, fake, bank_settings, push_settings(fake.url), transport, relay, outbox)
    try:
        if start:
            await push.start()
        yield push
    finally:
        await push.stop()
        await push.http.aclose()
        await transport.close()
        await asyncio.gather(accounts.stop(), fake.stop())


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[FakeServer]:
    """The fake APNs/FCM alone, on a real socket."""
    server = FakeServer(free_port())
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def push(db: Database, settings: BankSettings) -> AsyncIterator[Push]:
    async with running_push(db, settings) as running:
        yield running


__all__ = ["INTERNAL_TOKEN_HEADER", "WEBHOOKS_TOPIC", "Customer", "Push", "WebhookDisabled", "eventually"]
