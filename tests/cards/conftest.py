"""The cards service and accounts, each on its own uvicorn server on a real socket, on one real database.

accounts is the app tests/accounts/conftest.py builds (public + internal routes) plus the two identity
routes cards reads: the JWKS and the revocation list (`Bank.revoke` adds to it). cards is the real
`create_app` on its own Runtime (relay, compensation job, revocation poller), pointed at that accounts.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import text

from services.accounts.cards_client import CardsClient
from services.accounts.config import AccountsSettings
from services.accounts.jobs import resolve_unconfirmed_holds
from services.accounts.service import LedgerService
from services.cards.app import create_app
from services.cards.config import CardsSettings
from shared.auth import SigningKey
from shared.config import BankSettings
from shared.db import Database
from shared.runtime import Runtime
from tests.accounts.conftest import INTERNAL_TOKEN, Customer, build_app, create_customer, new_ledger
from tests.support.accounts import StubAccounts
from tests.support.serving import Served

NETWORK_KEY = "test-network-key"
# Generous: a loaded 2-core machine must not turn approvals into 91s. The deadline has its own tests.
TEST_DEADLINE_MS = 5_000


_messages = itertools.count(1)


def network_id() -> str:
    return f"NTX{next(_messages):06d}{datetime.now(UTC).strftime('%H%M%S%f')}"


def merchant(mcc: str = "5814", name: str = "BRIGHTBIRD ESPRESSO") -> dict[str, str]:
    return {"id": "BB0001", "name": name, "mcc": mcc, "city": "London", "country": "GB", "postcode": "N1 3JD"}


def yymm(mm_yy: str) -> str:
    month, year = mm_yy.split("/")
    return year + month


def authorisation(card: dict[str, Any], amount: int = 1_915, **overrides: Any) -> dict[str, Any]:
    """An 0100 for an issued card (the POST /cards answer's "card"), as the network would send it."""
    seq = next(_messages)
    message = {
        "mti": "0100",
        "pan": card["pan"],
        "expiry": yymm(card["expiry"]),
        "cvc": card["cvc"],
        "processing_code": "000000",
        "amount": amount,
        "currency": "GBP",
        "stan": f"{seq % 1_000_000:06d}",
        "rrn": f"{seq:012d}",
        "transmission_time": "2026-11-26T08:15:00Z",
        "network_transaction_id": network_id(),
        "merchant": merchant(),
    }
    message.update(overrides)
    return message


def presentment(card: dict[str, Any], amount: int, nid: str | None, **overrides: Any) -> dict[str, Any]:
    message = {
        "mti": "1240",
        "presentment_id": f"P{network_id()}",
        "network_transaction_id": nid,
        "pan": card["pan"],
        "processing_code": "000000",
        "amount": amount,
        "currency": "GBP",
        "merchant": merchant(),
    }
    message.update(overrides)
    return message


def reversal(message: dict[str, Any], replacement_amount: int | None = None) -> dict[str, Any]:
    body = {
        "mti": "0400",
        "network_transaction_id": message["network_transaction_id"],
        "amount": message["amount"],
        "currency": message["currency"],
        "stan": message["stan"],
        "rrn": message["rrn"],
        "transmission_time": "2026-11-26T08:16:00Z",
    }
    if replacement_amount is not None:
        body["replacement_amount"] = replacement_amount
    return body


@dataclass
class Bank:
    db: Database
    ledger: LedgerService
    key: SigningKey
    accounts: Served
    cards: Served
    http: httpx.AsyncClient  # to cards, no credentials
    revoked: dict[str, datetime | int] = field(default_factory=dict)

    @property
    def network_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {NETWORK_KEY}"}

    def auth(self, customer: Customer) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.issue(customer.user_id, 'oauthclient_test', 3600)[0]}"}

    async def customer(self, balance: int = 0, name: str = "Ada Lovelace") -> Customer:
        return await create_customer(self.db, self.ledger, balance=balance, name=name)

    async def issue(self, customer: Customer) -> dict[str, Any]:
        r = await self.http.post(
            "/cards", data={"account_id": customer.account_id}, headers=self.auth(customer)
        )
        assert r.status_code == 201, r.text
        card: dict[str, Any] = r.json()["card"]
        return card

    async def controls(self, customer: Customer, card: dict[str, Any], **form: str) -> httpx.Response:
        return await self.http.patch(f"/cards/{card['id']}/controls", data=form, headers=self.auth(customer))

    async def network(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(f"/network/{path}", json=body, headers=self.network_headers)

    async def authorise(self, message: dict[str, Any]) -> dict[str, Any]:
        r = await self.network("authorisations", message)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def present(self, message: dict[str, Any]) -> dict[str, Any]:
        r = await self.network("clearing", message)
        assert r.status_code == 200, r.text
        [result] = r.json()["results"]
        assert isinstance(result, dict)
        return result

    async def reverse(self, message: dict[str, Any]) -> dict[str, Any]:
        r = await self.network("reversals", message)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def resolve_holds(self) -> int:
        """Accounts' provisional-hold resolution, run now on every unconfirmed hold (decision 0031)."""
        cards = CardsClient(self.cards.url, INTERNAL_TOKEN)
        try:
            return await resolve_unconfirmed_holds(self.db, self.ledger, cards, older_than_seconds=0)
        finally:
            await cards.aclose()

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            return [dict(r._mapping) for r in await session.execute(text(sql), params)]

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        rows = await self.rows("SELECT * FROM accounts.holds WHERE network_txn_id = :id", id=hold_id)
        return rows[0] if rows else None

    async def money(self, customer: Customer) -> tuple[int, int]:
        """(balance, held) of the customer's account."""
        [row] = await self.rows(
            "SELECT balance, held FROM accounts.accounts WHERE id = :id", id=customer.account_id
        )
        return int(row["balance"]), int(row["held"])

    async def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        import json

        rows = await self.rows("SELECT event_type, key, payload FROM cards.outbox ORDER BY id")
        return [
            {"type": r["event_type"], "subject": r["key"], **json.loads(r["payload"])}
            for r in rows
            if event_type is None or r["event_type"] == event_type
        ]


def cards_settings(**overrides: Any) -> CardsSettings:
    values: dict[str, Any] = {
        "network_api_key": NETWORK_KEY,
        "accounts_deadline_ms": TEST_DEADLINE_MS,
        "compensation_poll_seconds": 0.05,
        "compensation_settle_seconds": 2.0,
        "accounts_breaker_reset_seconds": 0.2,
        "revocation_poll_seconds": 0.05,
        "jwks_min_refresh_seconds": 0.0,
        # Bursts of 100 concurrent authorisations on a busy machine must queue, not be shed: the
        # overload guard has its own test with a short queue.
        "authorisation_queue_seconds": 60.0,
        **overrides,
    }
    return CardsSettings(**values)


@asynccontextmanager
async def running_bank(db: Database, settings: BankSettings, **cards_overrides: Any) -> AsyncIterator[Bank]:
    ledger = new_ledger(AccountsSettings(topup_max=10**9))
    stub = StubAccounts()
    key, revoked = stub.key, stub.revoked
    accounts_app = build_app(db, ledger, key)
    accounts_app.include_router(stub.identity_router())  # what cards reads of accounts' identity
    accounts = Served(accounts_app)
    await accounts.start()
    bank_settings = settings.model_copy(
        update={"accounts_url": accounts.url, "internal_token": INTERNAL_TOKEN}
    )
    cards = Served(create_app(Runtime("cards", bank_settings), cards_settings(**cards_overrides)))
    await cards.start()
    try:
        async with httpx.AsyncClient(base_url=cards.url, timeout=30) as http:
            yield Bank(db, ledger, key, accounts, cards, http, revoked)
    finally:
        await asyncio.gather(cards.stop(), accounts.stop())


@pytest_asyncio.fixture(loop_scope="session")
async def bank(db: Database, settings: BankSettings) -> AsyncIterator[Bank]:
    async with running_bank(db, settings) as running:
        yield running
