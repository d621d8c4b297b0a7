"""Pots and payments between customers (issue 23, decision 0037), at the accounts service on a real
socket and a real ledger: every call, every bad input (a typed 4xx with nothing changed), idempotency
on dedupe_id, the events, and the ledger still sound after all of it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.accounts.config import AccountsSettings
from services.accounts.service import LedgerService
from services.accounts.verify import verify_ledger
from shared.db import Database
from shared.errors import BankError
from tests.accounts.conftest import AccountsServer, Customer, create_customer, new_ledger


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything a refused request must leave as it was: balances, entries, pots, payments, events."""
    async with db.read() as s:
        rows = await s.execute(text("SELECT id, balance FROM accounts.accounts"))
        balances = {r[0]: r[1] for r in rows}
        counts = {
            table: await s.scalar(text(f"SELECT count(*) FROM accounts.{table}"))
            for table in ("journal_entries", "postings", "pots", "payments", "outbox")
        }
    return {"balances": balances, "counts": counts}


async def events(db: Database, *types: str) -> list[dict[str, Any]]:
    async with db.read() as s:
        rows = await s.execute(
            text(
                "SELECT key, event_type, payload FROM accounts.outbox WHERE event_type = ANY(:t) ORDER BY id"
            ),
            {"t": list(types)},
        )
        return [{"key": k, "type": t, **json.loads(p)["data"]} for k, t, p in rows]


class Bank:
    def __init__(self, client: httpx.AsyncClient, server: AccountsServer) -> None:
        self.client, self.server = client, server

    async def create_pot(self, who: Customer, name: str = "Holiday", **extra: str) -> dict[str, Any]:
        r = await self.client.post(
            "/pots",
            data={"current_account_id": who.account_id, "name": name, **extra},
            headers={**self.server.auth(who), "Idempotency-Key": uuid.uuid4().hex},
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def move(
        self, who: Customer, pot_id: str, action: str, amount: str, dedupe_id: str | None = None, **extra: str
    ) -> httpx.Response:
        field = "source_account_id" if action == "deposit" else "destination_account_id"
        data = {field: who.account_id, "amount": amount, "dedupe_id": dedupe_id or uuid.uuid4().hex, **extra}
        return await self.client.put(f"/pots/{pot_id}/{action}", data=data, headers=self.server.auth(who))

    async def balance(self, who: Customer) -> dict[str, Any]:
        r = await self.client.get(
            "/balance", params={"account_id": who.account_id}, headers=self.server.auth(who)
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def pay(self, who: Customer, amount: str, recipient: str, **extra: str) -> httpx.Response:
        data = {
            "source_account_id": who.account_id, "amount": amount, "currency": "GBP", "recipient": recipient,
            "reference": "pizza", "dedupe_id": uuid.uuid4().hex, **extra,
        }  # fmt: skip
        return await self.client.post("/payments", data=data, headers=self.server.auth(who))


@pytest.fixture
def bank(client: httpx.AsyncClient, accounts_server: AccountsServer) -> Bank:
    return Bank(client, accounts_server)


# Pots ----------------------------------------------------------------------------------------------


async def test_a_pot_is_created_listed_filled_emptied_and_deleted(
    db: Database, ledger: LedgerService, bank: Bank
) -> None:
    ada = await create_customer(db, ledger, balance=10_000)
    pot = await bank.create_pot(ada, "Holiday", goal_amount="50000", style="beach_ball")
    assert pot["id"].startswith("pot_") and pot["balance"] == 0 and pot["currency"] == "GBP"
    assert (pot["name"], pot["style"], pot["goal_amount"], pot["deleted"]) == (
        "Holiday",
        "beach_ball",
        50000,
        False,
    )
    assert pot["current_account_id"] == ada.account_id and pot["type"] == "default"
    assert {"created", "updated"} <= set(pot)

    r = await bank.move(ada, pot["id"], "deposit", "2500")
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == 2500 and r.json()["id"] == pot["id"]
    money = await bank.balance(ada)
    assert (money["balance"], money["total_balance"]) == (7_500, 10_000), money

    r = await bank.client.get(
        "/pots", params={"current_account_id": ada.account_id}, headers=bank.server.auth(ada)
    )
    assert r.status_code == 200 and [p["balance"] for p in r.json()["pots"]] == [2500], r.text

    r = await bank.client.delete(f"/pots/{pot['id']}", headers=bank.server.auth(ada))
    assert r.status_code == 409 and r.json()["code"] == "conflict.pot_not_empty", r.text

    r = await bank.move(ada, pot["id"], "withdraw", "2500")
    assert r.status_code == 200 and r.json()["balance"] == 0, r.text
    assert (await bank.balance(ada))["balance"] == 10_000

    r = await bank.client.delete(f"/pots/{pot['id']}", headers=bank.server.auth(ada))
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    again = await bank.client.delete(f"/pots/{pot['id']}", headers=bank.server.auth(ada))
    assert again.status_code == 200 and again.json()["deleted"] is True

    moved = await events(db, "account.pot.deposited", "account.pot.withdrawn")
    assert [(e["type"], e["amount"], e["pot_balance"], e["key"]) for e in moved] == [
        ("account.pot.deposited", -2500, 2500, ada.account_id),
        ("account.pot.withdrawn", 2500, 0, ada.account_id),
    ]
    assert moved[0]["balance"] == 7_500 and moved[0]["pot_name"] == "Holiday"
    assert [e["type"] for e in await events(db, "account.pot.created", "account.pot.deleted")] == [
        "account.pot.created", "account.pot.deleted",
    ]  # fmt: skip
    assert await verify_ledger(db) == []


async def test_pot_moves_are_idempotent_on_dedupe_id(db: Database, ledger: LedgerService, bank: Bank) -> None:
    ada = await create_customer(db, ledger, balance=10_000)
    pot = await bank.create_pot(ada)
    first = await bank.move(ada, pot["id"], "deposit", "1000", dedupe_id="d-1")
    again = await bank.move(ada, pot["id"], "deposit", "1000", dedupe_id="d-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert (await bank.balance(ada))["balance"] == 9_000
    before = await snapshot(db)
    for other in (
        bank.move(ada, pot["id"], "deposit", "1001", dedupe_id="d-1"),
        bank.move(ada, pot["id"], "withdraw", "1000", dedupe_id="d-1"),
    ):
        r = await other
        assert r.status_code == 422 and r.json()["code"] == "unprocessable.idempotency_key_reused", r.text
    assert await snapshot(db) == before


async def test_bad_pot_requests_get_a_typed_4xx_and_change_nothing(
    db: Database, ledger: LedgerService, bank: Bank
) -> None:
    ada = await create_customer(db, ledger, balance=5_000)
    bob = await create_customer(db, ledger, balance=5_000, name="Bob Smith")
    pot = await bank.create_pot(ada)
    assert (await bank.move(ada, pot["id"], "deposit", "1000")).status_code == 200
    bobs = await bank.create_pot(bob, "Bob's")
    gone = await bank.create_pot(ada, "Old")
    assert (await bank.client.delete(f"/pots/{gone['id']}", headers=bank.server.auth(ada))).status_code == 200
    before = await snapshot(db)
    cases = [
        (bank.move(ada, bobs["id"], "deposit", "100"), 403, "forbidden.insufficient_permissions"),
        (bank.move(bob, pot["id"], "withdraw", "100"), 403, "forbidden.insufficient_permissions"),
        (bank.move(ada, "pot_nosuchpot", "deposit", "100"), 404, "not_found.pot"),
        (bank.move(ada, gone["id"], "deposit", "100"), 409, "conflict.pot_deleted"),
        (bank.move(ada, pot["id"], "deposit", "0"), 400, "bad_request.bad_param.amount"),
        (bank.move(ada, pot["id"], "deposit", "-5"), 400, "bad_request.bad_param.amount"),
        (bank.move(ada, pot["id"], "deposit", "1.5"), 400, "bad_request.bad_param.amount"),
        (bank.move(ada, pot["id"], "withdraw", "0.01"), 400, "bad_request.bad_param.amount"),
        (bank.move(ada, pot["id"], "deposit", "4001"), 422, "insufficient_funds.account"),
        (bank.move(ada, pot["id"], "withdraw", "1001"), 422, "insufficient_funds.pot"),
        (bank.move(ada, pot["id"], "deposit", "100", dedupe_id=" "), 400, "bad_request.missing_param"),
        (
            bank.move(ada, pot["id"], "deposit", "100", source_account_id=bob.account_id),
            403,
            "forbidden.insufficient_permissions",
        ),
        (
            bank.client.delete(f"/pots/{bobs['id']}", headers=bank.server.auth(ada)),
            403,
            "forbidden.insufficient_permissions",
        ),
        (
            bank.client.get(
                "/pots", params={"current_account_id": bob.account_id}, headers=bank.server.auth(ada)
            ),
            403,
            "forbidden.insufficient_permissions",
        ),
    ]
    for request, status, code in cases:
        r = await request
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
    for form in (
        {"current_account_id": ada.account_id, "name": ""},
        {"current_account_id": ada.account_id, "name": "x" * 101},
        {"current_account_id": ada.account_id, "name": "ok", "goal_amount": "-1"},
        {"current_account_id": ada.account_id, "name": "ok", "style": "Beach Ball!"},
        {"current_account_id": bob.account_id, "name": "mine now"},
    ):
        r = await bank.client.post(
            "/pots", data=form, headers={**bank.server.auth(ada), "Idempotency-Key": uuid.uuid4().hex}
        )
        assert r.status_code in (400, 403) and "." in r.json()["code"], (form, r.text)
    assert await snapshot(db) == before


async def test_a_pot_of_another_account_cannot_be_filled_from_this_one(
    db: Database, ledger: LedgerService, bank: Bank
) -> None:
    ada = await create_customer(db, ledger, balance=5_000)
    async with db.transaction() as session:
        second = await ledger.open_account(session, ada.user_id)
    pot = await bank.create_pot(ada)
    r = await bank.move(ada, pot["id"], "deposit", "100", source_account_id=second.id)
    assert r.status_code == 400 and r.json()["code"] == "bad_request.bad_param.source_account_id", r.text


# Payments --------------------------------------------------------------------------------------------


async def test_a_payment_moves_money_once_and_tells_both_sides(
    db: Database, ledger: LedgerService, bank: Bank
) -> None:
    jane = await create_customer(db, ledger, balance=5_000, name="Jane Doe")
    sam = await create_customer(db, ledger, balance=100, name="Sam Lee")
    r = await bank.pay(jane, "1000", f"  {sam.user_id}@EXAMPLE.com ", dedupe_id="p-1")
    assert r.status_code == 201, r.text
    payment = r.json()["payment"]
    assert payment["id"].startswith("p2p_") and payment["amount"] == 1000 and payment["reference"] == "pizza"
    assert payment["recipient"] == {"user_id": sam.user_id, "name": "Sam Lee"}
    again = await bank.pay(jane, "1000", f"  {sam.user_id}@EXAMPLE.com ", dedupe_id="p-1")
    assert (again.status_code, again.json()) == (201, r.json())
    r = await bank.pay(jane, "250", sam.account_id, reference="")
    assert r.status_code == 201, r.text
    assert (await bank.balance(jane))["balance"] == 3_750
    assert (await bank.balance(sam))["balance"] == 1_350

    moved = await events(db, "account.payment.sent", "account.payment.received")
    assert [(e["type"], e["key"], e["amount"], e["counterparty_name"]) for e in moved] == [
        ("account.payment.sent", jane.account_id, -1000, "Sam Lee"),
        ("account.payment.received", sam.account_id, 1000, "Jane Doe"),
        ("account.payment.sent", jane.account_id, -250, "Sam Lee"),
        ("account.payment.received", sam.account_id, 250, "Jane Doe"),
    ]
    assert moved[1]["counterparty_user_id"] == jane.user_id and moved[1]["reference"] == "pizza"
    assert (moved[0]["balance"], moved[1]["balance"]) == (4_000, 1_100)
    async with db.read() as s:
        entries = (await s.execute(text(
            "SELECT e.kind, count(p.id) FROM accounts.journal_entries e JOIN accounts.postings p "
            "ON p.entry_id = e.id WHERE e.kind = 'p2p_payment' GROUP BY e.id, e.kind"
        ))).all()  # fmt: skip
    assert [tuple(e) for e in entries] == [("p2p_payment", 2)] * 2  # one entry each, two postings
    assert await verify_ledger(db) == []


async def test_bad_payments_get_a_typed_4xx_and_move_nothing(
    db: Database, ledger: LedgerService, bank: Bank
) -> None:
    jane = await create_customer(db, ledger, balance=5_000, name="Jane Doe")
    sam = await create_customer(db, ledger, name="Sam Lee")
    closed = await create_customer(db, ledger, name="Gone Away")
    euro = await create_customer(db, ledger, name="Eva Euro")
    async with db.transaction() as s:
        await s.execute(
            text("UPDATE accounts.accounts SET closed = true WHERE id = :a"), {"a": closed.account_id}
        )
        await s.execute(
            text("UPDATE accounts.accounts SET currency = 'EUR' WHERE id = :a"), {"a": euro.account_id}
        )
    pot = await bank.create_pot(sam)
    async with db.transaction() as session:
        jane_second = await ledger.open_account(session, jane.user_id)
    before = await snapshot(db)
    cases = [
        (bank.pay(jane, "5001", sam.account_id), 422, "insufficient_funds.available_balance"),
        (bank.pay(jane, "0", sam.account_id), 400, "bad_request.bad_param.amount"),
        (bank.pay(jane, "-1", sam.account_id), 400, "bad_request.bad_param.amount"),
        (bank.pay(jane, "1.5", sam.account_id), 400, "bad_request.bad_param.amount"),
        (bank.pay(jane, "100", jane.account_id), 422, "unprocessable.pay_yourself"),
        (bank.pay(jane, "100", jane_second.id), 422, "unprocessable.pay_yourself"),
        (bank.pay(jane, "100", f"{jane.user_id}@example.com"), 422, "unprocessable.pay_yourself"),
        (bank.pay(jane, "100", closed.account_id), 409, "conflict.account_closed"),
        (bank.pay(jane, "100", euro.account_id), 422, "unprocessable.currency_mismatch"),
        (bank.pay(jane, "100", sam.account_id, currency="EUR"), 400, "bad_request.bad_param.currency"),
        (bank.pay(jane, "100", pot["id"]), 400, "bad_request.bad_param.recipient"),
        (bank.pay(jane, "100", "acc_nosuchaccount"), 404, "not_found.recipient"),
        (bank.pay(jane, "100", "nobody@example.com"), 404, "not_found.recipient"),
        (bank.pay(jane, "100", "' OR 1=1 --"), 400, "bad_request.bad_param.recipient"),
        (bank.pay(sam, "100", jane.account_id, source_account_id=jane.account_id), 403,
         "forbidden.insufficient_permissions"),
        (bank.pay(jane, "100", sam.account_id, dedupe_id=""), 400, "bad_request.missing_param"),
        (bank.pay(jane, "100", sam.account_id, reference="x" * 141), 400, "bad_request.bad_param.reference"),
    ]  # fmt: skip
    for request, status, code in cases:
        r = await request
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
    r = await bank.pay(jane, "100", sam.account_id, dedupe_id="same")
    assert r.status_code == 201
    after_one = await snapshot(db)
    r = await bank.pay(jane, "101", sam.account_id, dedupe_id="same")
    assert r.status_code == 422 and r.json()["code"] == "unprocessable.idempotency_key_reused"
    assert await snapshot(db) == after_one
    assert after_one["balances"][jane.account_id] == before["balances"][jane.account_id] - 100


async def test_the_daily_limit_counts_what_was_sent_today(db: Database) -> None:
    ledger = new_ledger(AccountsSettings(p2p_daily_limit=1_000))
    jane = await create_customer(db, ledger, balance=5_000)
    sam = await create_customer(db, ledger)

    async def pay(amount: int) -> None:
        async with db.transaction() as session:
            await ledger.pay(
                session, jane.user_id, source_account_id=jane.account_id, amount=amount, currency="GBP",
                recipient=sam.account_id, reference="",
            )  # fmt: skip

    await pay(600)
    await pay(400)
    with pytest.raises(BankError) as refused:
        await pay(1)
    assert refused.value.code == "unprocessable.daily_limit_exceeded" and refused.value.status == 422
    async with db.transaction() as s:  # yesterday's payments do not count today
        await s.execute(text("UPDATE accounts.payments SET created = created - interval '1 day'"))
    await pay(1_000)
    assert await verify_ledger(db) == []
