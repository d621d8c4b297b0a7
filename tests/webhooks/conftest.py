"""The webhooks service on a real socket, accounts beside it, receivers as real HTTP servers on loopback.

Events are produced as the transactions service produces them: `Outbox("transactions").emit` of a
`transaction.created` / `transaction.updated` envelope (docs/events.md) inside a database transaction,
then a `Relay` publishes it on `transactions.feed` over the test's transport (pglog, or Kafka).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from services.accounts.config import AccountsSettings
from services.accounts.service import LedgerService
from services.transactions.events import TransactionCreated, TransactionUpdated
from services.webhooks.app import create_app
from services.webhooks.config import WebhooksSettings
from shared import topics
from shared.auth import SigningKey
from shared.config import BankSettings
from shared.db import Database
from shared.events import make_transport
from shared.events.outbox import Outbox
from shared.events.relay import Relay
from shared.events.transports.base import Transport
from shared.runtime import Runtime
from tests.accounts.conftest import INTERNAL_TOKEN, Customer, build_app, create_customer, new_ledger
from tests.support.accounts import StubAccounts
from tests.support.serving import Served

FEED = topics.TRANSACTIONS_FEED


# -- receivers -------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], Any]  # status, headers, body: bytes or an async iterator of chunks
Behaviour = Callable[[int, Received], Awaitable[Reply]]


async def ok(n: int, request: Received) -> Reply:
    return 200, {}, b"ok"


class Receiver:
    """A webhook receiver: a tiny ASGI app on uvicorn on a loopback port. `behaviour(n, request)` answers
    the n-th request (1-based) and may block; every request is recorded before it is answered."""

    def __init__(self, behaviour: Behaviour = ok) -> None:
        self.behaviour = behaviour
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = Served(self, lifespan="off", timeout_graceful_shutdown=1)
        self.port = self.served.port
        self.url = f"{self.served.url}/hook"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Received(scope["path"], headers, body)
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            status, reply_headers, reply = await self.behaviour(len(self.requests), request)
        finally:
            self.in_flight -= 1
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in reply_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        if isinstance(reply, bytes):
            await send({"type": "http.response.body", "body": reply})
            return
        async for chunk in reply:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> Receiver:
        await self.served.start()
        return self

    async def stop(self) -> None:
        await self.served.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(behaviour: Behaviour = ok) -> Receiver:
        receiver = await Receiver(behaviour).start()
        started.append(receiver)
        return receiver

    yield make
    await asyncio.gather(*(r.stop() for r in started))


# -- producing the feed's events -------------------------------------------------------------------------


_tx = itertools.count(1)


def mondo_transaction(account_id: str, amount: int = -1915, **overrides: Any) -> dict[str, Any]:
    """`GET /transactions/{id}?expand[]=merchant`'s transaction, as the feed emits it."""
    n = next(_tx)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    tx = {
        "id": f"tx_TEST{n:010d}",
        "account_id": account_id,
        "account_balance": 10_000 + amount,
        "amount": amount,
        "currency": "GBP",
        "local_amount": amount,
        "local_currency": "GBP",
        "created": now,
        "updated": now,
        "description": "BRIGHTBIRD ESPRESSO LONDON GBR",
        "category": "eating_out",
        "is_load": False,
        "settled": "",
        "notes": "",
        "metadata": {},
        "attachments": [],
        "merchant": {
            "id": "merch_TEST0001",
            "group_id": "grp_TEST0001",
            "name": "Brightbird Espresso",
            "logo": "",
            "emoji": "☕",
            "category": "eating_out",
            "online": False,
            "atm": False,
            "created": now,
            "address": {
                "address": "1 Upper Street",
                "city": "London",
                "country": "GB",
                "postcode": "N1 3JD",
                "region": "",
                "latitude": 51.5361,
                "longitude": -0.1034,
            },
        },
    }
    tx.update(overrides)
    return tx


class Producer:
    """Plays the transactions service: outbox row in a transaction, then its relay publishes it."""

    def __init__(self, db: Database, transport: Transport) -> None:
        self.db = db
        self.outbox = Outbox("transactions")
        self.relay = Relay(db, self.outbox, transport)

    async def emit(
        self, customer: Customer, tx: dict[str, Any] | None = None, event_type: str = "transaction.created"
    ) -> dict[str, Any]:
        tx = tx or mondo_transaction(customer.account_id)
        model = TransactionCreated if event_type == "transaction.created" else TransactionUpdated
        data = model.model_validate(
            {
                "account_id": customer.account_id,
                "user_id": customer.user_id,
                "kind": "card_payment",
                "change": "created" if event_type == "transaction.created" else "settled",
                "tx_version": 1 if event_type == "transaction.created" else 2,
                "spend_today": {"amount": -int(tx["amount"]), "currency": "GBP"},
                "transaction": tx,
            }
        )
        async with self.db.transaction() as session:
            await self.outbox.emit(session, FEED, customer.account_id, data)
        await self.relay.drain()
        return tx


# -- the service -----------------------------------------------------------------------------------------


def webhooks_settings(**overrides: Any) -> WebhooksSettings:
    values: dict[str, Any] = {
        "allow_http": True,
        "allow_networks": ["127.0.0.1/32"],
        "timeout_seconds": 5.0,
        "retry_schedule_seconds": [0.05] * 7,
        "jitter": 0.1,
        "poll_seconds": 0.05,
        "lease_grace_seconds": 1.0,
        "jwks_min_refresh_seconds": 0.0,
        "revocation_poll_seconds": 0.2,
        **overrides,
    }
    return WebhooksSettings(**values)


@dataclass
class Hooks:
    db: Database
    bank_settings: BankSettings
    ledger: LedgerService
    key: SigningKey
    accounts: Served
    service: Served
    http: httpx.AsyncClient  # to the webhooks service, no credentials
    producer: Producer
    transport: Transport
    extra: list[Served] = field(default_factory=list)

    def auth(self, customer: Customer) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.issue(customer.user_id, 'oauthclient_test', 3600)[0]}"}

    async def customer(self, name: str = "Ada Lovelace") -> Customer:
        return await create_customer(self.db, self.ledger, balance=10_000, name=name)

    async def register(self, customer: Customer, url: str) -> dict[str, Any]:
        r = await self.http.post(
            "/webhooks", data={"account_id": customer.account_id, "url": url}, headers=self.auth(customer)
        )
        assert r.status_code == 200, r.text
        webhook: dict[str, Any] = r.json()["webhook"]
        return webhook

    async def deliveries(self, customer: Customer, webhook_id: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"/webhooks/{webhook_id}/deliveries", headers=self.auth(customer))
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()["deliveries"]
        return found

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            return [dict(r._mapping) for r in await session.execute(text(sql), params)]

    async def delivery_status(self, webhook_id: str) -> list[str]:
        rows = await self.rows(
            "SELECT status FROM webhooks.deliveries WHERE webhook_id = :w ORDER BY seq", w=webhook_id
        )
        return [r["status"] for r in rows]

    async def emitted(self, event_type: str) -> list[dict[str, Any]]:
        rows = await self.rows(
            "SELECT payload FROM webhooks.outbox WHERE event_type = :t ORDER BY id", t=event_type
        )
        return [json.loads(r["payload"]) for r in rows]


def bank_settings_for(
    settings: BankSettings, accounts: Served, transport: str, bootstrap: str
) -> BankSettings:
    return settings.model_copy(
        update={
            "accounts_url": accounts.url,
            "internal_token": INTERNAL_TOKEN,
            "transport": transport,
            "kafka_bootstrap": bootstrap,
        }
    )


@asynccontextmanager
async def running_webhooks(
    db: Database, settings: BankSettings, *, transport: str = "pglog", bootstrap: str = "", **overrides: Any
) -> AsyncIterator[Hooks]:
    ledger = new_ledger(AccountsSettings(topup_max=10**9))
    key = SigningKey.generate()
    accounts_app = build_app(db, ledger, key)
    accounts_app.include_router(StubAccounts(key).identity_router())
    accounts = Served(accounts_app)
    await accounts.start()
    bank = bank_settings_for(settings, accounts, transport, bootstrap or settings.kafka_bootstrap)
    service = Served(create_app(Runtime("webhooks", bank), webhooks_settings(**overrides)))
    await service.start()
    producer_transport = make_transport(bank, client_id="transactions-test")
    await producer_transport.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            yield Hooks(
                db,
                bank,
                ledger,
                key,
                accounts,
                service,
                http,
                Producer(db, producer_transport),
                producer_transport,
            )
    finally:
        await producer_transport.close()
        await asyncio.gather(service.stop(), accounts.stop())


@pytest_asyncio.fixture(loop_scope="session")
async def hooks(db: Database, settings: BankSettings) -> AsyncIterator[Hooks]:
    async with running_webhooks(db, settings) as running:
        yield running


@pytest_asyncio.fixture(
    loop_scope="session", params=["pglog", pytest.param("kafka", marks=pytest.mark.kafka)]
)
async def hooks_on_both(
    request: pytest.FixtureRequest, db: Database, settings: BankSettings
) -> AsyncIterator[Hooks]:
    bootstrap = request.getfixturevalue("kafka_broker").bootstrap if request.param == "kafka" else ""
    async with running_webhooks(db, settings, transport=request.param, bootstrap=bootstrap) as running:
        yield running
