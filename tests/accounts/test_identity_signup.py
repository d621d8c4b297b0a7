"""Sign-up over HTTP: a customer and their prepaid account in one transaction; input rules; duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text

from services.accounts.identity.passwords import verify_password
from services.accounts.service import LedgerService
from shared.db import Database
from tests.accounts.identity_support import PASSWORD, RFC3339, IdentityServer, running_identity


@pytest_asyncio.fixture(loop_scope="session")
async def server(db: Database, ledger: LedgerService) -> AsyncIterator[IdentityServer]:
    async with running_identity(db, ledger) as running:
        yield running


async def test_sign_up_creates_a_customer_and_a_prepaid_account(server: IdentityServer, db: Database) -> None:
    form = {"email": "Ada@Example.com", "password": PASSWORD, "name": "  Ada Lovelace "}
    r = await server.http.post("/users", data=form)

    assert r.status_code == 201, r.text
    body = r.json()
    user, account = body["user"], body["account"]
    assert set(body) == {"user", "account"}
    assert set(user) == {"id", "email", "name", "created"}
    assert user["id"].startswith("user_")
    assert (user["email"], user["name"]) == ("Ada@Example.com", "Ada Lovelace")
    assert RFC3339.match(user["created"])
    assert account["id"].startswith("acc_")
    assert RFC3339.match(account["created"])
    assert {k: v for k, v in account.items() if k not in ("id", "created")} == {
        "description": "Mondo prepaid account",
        "closed": False,
        "type": "uk_prepaid",
        "currency": "GBP",
        "country_code": "GB",
        "owners": [{"user_id": user["id"], "preferred_name": "Ada Lovelace", "preferred_first_name": "Ada"}],
    }

    async with db.read() as session:
        stored = (
            await session.execute(
                text("SELECT password_hash FROM accounts.users WHERE id = :id"), {"id": user["id"]}
            )
        ).scalar_one()
        owner = (
            await session.execute(
                text("SELECT user_id FROM accounts.accounts WHERE id = :id"), {"id": account["id"]}
            )
        ).scalar_one()
        events = (
            await session.execute(text("SELECT event_type, key FROM accounts.outbox ORDER BY id"))
        ).all()
    assert stored.startswith("scrypt$16384$8$1$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored)
    assert owner == user["id"]
    assert ("account.created", account["id"]) in [tuple(e) for e in events]


async def test_an_email_signs_up_once_whatever_its_case(server: IdentityServer, db: Database) -> None:
    first = await server.http.post(
        "/users", data={"email": "grace@example.com", "password": PASSWORD, "name": "G"}
    )
    again = await server.http.post(
        "/users", data={"email": "GRACE@example.COM", "password": PASSWORD, "name": "G"}
    )

    assert first.status_code == 201
    assert again.status_code == 409
    assert again.json()["code"] == "conflict.email_taken"
    async with db.read() as session:
        counts = (
            await session.execute(
                text(
                    "SELECT (SELECT count(*) FROM accounts.users),"
                    " (SELECT count(*) FROM accounts.accounts WHERE kind = 'customer')"
                )
            )
        ).one()
    assert tuple(counts) == (1, 1)  # the refused sign-up left no account behind


async def test_concurrent_sign_ups_with_one_email_make_one_customer(server: IdentityServer) -> None:
    form = {"email": "race@example.com", "password": PASSWORD, "name": "Racer"}
    results = await asyncio.gather(*(server.http.post("/users", data=form) for _ in range(6)))
    assert sorted(r.status_code for r in results) == [201, 409, 409, 409, 409, 409]


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "name": "A"}, "bad_request.bad_param.email"),
        ({"email": "a b@example.com", "password": PASSWORD, "name": "A"}, "bad_request.bad_param.email"),
        ({"email": "a@localhost", "password": PASSWORD, "name": "A"}, "bad_request.bad_param.email"),
        ({"email": "a@example.com", "password": "short", "name": "A"}, "bad_request.bad_param.password"),
        ({"email": "a@example.com", "password": "x" * 1025, "name": "A"}, "bad_request.bad_param.password"),
        ({"email": "a@example.com", "password": PASSWORD, "name": "   "}, "bad_request.bad_param.name"),
        ({"email": "a@example.com", "password": PASSWORD}, "bad_request.missing_param"),
        ({"password": PASSWORD, "name": "A"}, "bad_request.missing_param"),
    ],
)
async def test_bad_sign_ups_are_refused_with_typed_codes(
    server: IdentityServer, form: dict[str, str], code: str
) -> None:
    r = await server.http.post("/users", data=form)
    assert r.status_code == 400
    assert r.json()["code"] == code
