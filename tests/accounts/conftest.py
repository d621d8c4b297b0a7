"""Fixtures for the accounts service: customers on a real ledger, and the service on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI

from services.accounts.api import internal_router, pots_router, public_router
from services.accounts.config import AccountsSettings
from services.accounts.models import User
from services.accounts.service import LedgerService
from shared.auth import INTERNAL_TOKEN_HEADER, SigningKey, TokenVerifier
from shared.db import Database
from shared.events.outbox import Outbox
from shared.ids import new_id
from shared.web import create_app
from tests.support.serving import Served

INTERNAL_TOKEN = "test-internal-token"


@dataclass(frozen=True)
class Customer:
    user_id: str
    account_id: str


def new_ledger(settings: AccountsSettings | None = None) -> LedgerService:
    return LedgerService(Outbox("accounts"), settings or AccountsSettings())


async def create_customer(
    db: Database, ledger: LedgerService, *, balance: int = 0, name: str = "Ada Lovelace"
) -> Customer:
    """A customer with an account, funded by a real top-up when `balance` > 0."""
    user_id = new_id("user")
    async with db.transaction() as session:
        session.add(User(id=user_id, email=f"{user_id}@example.com", name=name, password_hash="x"))
        await session.flush()
        account = await ledger.open_account(session, user_id)
        if balance:
            await ledger.topup(session, user_id, account.id, balance, "GBP")
    return Customer(user_id, account.id)


@pytest_asyncio.fixture(loop_scope="session")
async def ledger(db: Database) -> LedgerService:
    return new_ledger(AccountsSettings(topup_max=10**9))


@dataclass
class AccountsServer:
    url: str
    key: SigningKey
    internal_headers: dict[str, str]

    def token_for(self, user_id: str, client_id: str = "oauthclient_test") -> str:
        return self.key.issue(user_id, client_id, 3600)[0]

    def auth(self, customer: Customer) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_for(customer.user_id)}"}


def build_app(db: Database, ledger: LedgerService, key: SigningKey) -> FastAPI:
    app = create_app(
        "accounts", routers=[public_router(db, ledger), pots_router(db, ledger), internal_router(db, ledger)]
    )
    public = key.private_key.public_key()

    async def lookup(kid: str) -> Ed25519PublicKey | None:
        return public if kid == key.kid else None

    app.state.token_verifier = TokenVerifier(lookup)
    app.state.internal_token = INTERNAL_TOKEN
    return app


@pytest_asyncio.fixture(loop_scope="session")
async def accounts_server(db: Database, ledger: LedgerService) -> AsyncIterator[AccountsServer]:
    key = SigningKey.generate()
    async with Served(build_app(db, ledger, key), log_level="warning") as served:
        yield AccountsServer(served.url, key, {INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN})


@pytest_asyncio.fixture(loop_scope="session")
async def client(accounts_server: AccountsServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=accounts_server.url, timeout=30) as http:
        yield http
