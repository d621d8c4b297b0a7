"""Fixtures for transactions: the feed's handlers on a real database, and the service on a real socket.

`feed.apply(...)` runs the service's own handlers, one event per database transaction, as the consumer
does (without a transport: the consumer tests in test_consumer.py cover pglog and Kafka). `service`
is the real `create_app` on uvicorn, its tokens checked against a small stand-in for accounts' JWKS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import text

from services.transactions.app import create_app
from services.transactions.config import TransactionsSettings
from services.transactions.consumers import TOPICS, FeedProjector
from services.transactions.publish import Announcer
from shared import topics
from shared.auth import SigningKey
from shared.config import BankSettings
from shared.db import Database
from shared.events.envelope import Envelope
from shared.events.outbox import Outbox
from shared.runtime import Runtime
from tests.support.accounts import StubAccounts
from tests.support.consuming import DrivenConsumer
from tests.support.serving import Served

LOGOS = "https://logos.test/m"
FEED_TABLES = (
    "transactions", "source_events", "ledger_points", "merchants", "owners", "spend_days", "outbox",
)  # fmt: skip
BATCH_CONSUMER = "transactions.feed-batch-test"


@dataclass
class Feed:
    db: Database
    projector: FeedProjector

    async def apply(self, *envelopes: Envelope) -> None:
        handlers = self.projector.handlers()
        for e in envelopes:
            async with self.db.transaction() as session:
                await handlers[e.type](session, e)

    async def apply_batches(self, *batches: Sequence[Envelope], fallbacks: int = 0) -> None:
        """Each batch through the consumer runner (inbox, batch path, and the per-event fallback that
        dead-letters), one database transaction per batch, as consumed; `fallbacks`: how many batches
        are expected to fail the batch path and be redone event by event."""
        consumer = DrivenConsumer(
            self.db, BATCH_CONSUMER, "transactions", self.projector.handlers(), self.projector.on_batch,
            TOPICS, topic_of=lambda _: topics.CARD_AUTHORISATIONS,
        )  # fmt: skip
        for batch in batches:
            await consumer.consume(batch)
        assert len(consumer.failures) == fallbacks, consumer.failures

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            return [dict(r._mapping) for r in await session.execute(text(sql), params)]

    async def published(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """What transactions put in its outbox: the CloudEvents, in order."""
        rows = await self.rows("SELECT event_type, payload FROM transactions.outbox ORDER BY id")
        return [json.loads(r["payload"]) for r in rows if event_type in (None, r["event_type"])]

    async def clear(self) -> None:
        async with self.db.transaction() as session:
            await session.execute(text(f"TRUNCATE {', '.join('transactions.' + t for t in FEED_TABLES)}"))
            for table in ("inbox", "dead_letters"):  # the batch tests' consumer only
                await session.execute(
                    text(f"DELETE FROM transactions.{table} WHERE consumer = :c"), {"c": BATCH_CONSUMER}
                )


def new_projector() -> FeedProjector:
    return FeedProjector(Announcer(Outbox("transactions")), LOGOS)


@pytest_asyncio.fixture(loop_scope="session")
async def feed(db: Database) -> Feed:
    return Feed(db, new_projector())


@dataclass
class Service:
    feed: Feed
    key: SigningKey
    http: httpx.AsyncClient

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.issue(user_id, 'oauthclient_test', 3600)[0]}"}

    async def get(self, path: str, user_id: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.auth(user_id))


def service_settings(**overrides: Any) -> TransactionsSettings:
    values: dict[str, Any] = {
        "logo_base_url": LOGOS, "revocation_poll_seconds": 0.05, "jwks_min_refresh_seconds": 0.0, **overrides,
    }  # fmt: skip
    return TransactionsSettings(**values)


async def start_service(settings: BankSettings, **overrides: Any) -> tuple[SigningKey, Served, Served]:
    stub = StubAccounts()  # what transactions reads of accounts: the JWKS and the revocation list
    key = stub.key
    identity = Served(stub.app())
    await identity.start()
    bank = settings.model_copy(update={"accounts_url": identity.url})
    app = Served(create_app(Runtime("transactions", bank), service_settings(**overrides)))
    await app.start()
    return key, identity, app


@pytest_asyncio.fixture(loop_scope="session")
async def service(feed: Feed, settings: BankSettings) -> AsyncIterator[Service]:
    key, identity, app = await start_service(settings)
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            yield Service(feed, key, http)
    finally:
        await asyncio.gather(app.stop(), identity.stop())


ACC, USER = "acc_ada", "user_ada"
OTHER_ACC, OTHER = "acc_bob", "user_bob"
PUBLIC = "http://bank.test"  # the gateway's address the stores sign their URLs for


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # a small image for the attachment tests


@dataclass
class AttachmentsClient:
    """A customer's app calling the attachment routes of a service started by `start_service`."""

    feed: Feed
    key: SigningKey
    http: httpx.AsyncClient  # the service
    url: str

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.issue(user_id, 'oauthclient_test', 3600)[0]}"}

    def local(self, public_url: str) -> str:
        """A URL the store signed for the gateway, sent to the service itself (no gateway here)."""
        assert public_url.startswith(PUBLIC), public_url
        return self.url + public_url.removeprefix(PUBLIC)

    async def post(self, path: str, user_id: str, **form: str) -> httpx.Response:
        return await self.http.post(path, data=form, headers=self.auth(user_id))

    async def upload(
        self, user_id: str, data: bytes, file_type: str, name: str = "receipt"
    ) -> dict[str, str]:
        """Ask where to upload: `upload_url` and `file_url`."""
        r = await self.post("/attachment/upload", user_id, file_name=name, file_type=file_type,
                            content_length=str(len(data)))  # fmt: skip
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def transaction(self, user_id: str) -> dict[str, Any]:
        r = await self.http.get("/transactions", params={"account_id": ACC if user_id == USER else OTHER_ACC},
                                headers=self.auth(user_id))  # fmt: skip
        return dict(r.json()["transactions"][-1])
