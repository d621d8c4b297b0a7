"""Accounts' HTTP API over a real socket: Mondo shapes, ownership, top-up idempotency, errors."""

from __future__ import annotations

import httpx

from services.accounts.service import LedgerService
from shared.db import Database
from tests.accounts.conftest import AccountsServer, create_customer


async def test_accounts_lists_only_the_callers_accounts_in_mondo_shape(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, name="Ada Lovelace")
    await create_customer(db, ledger, name="Charles Babbage")
    r = await client.get("/accounts", headers=accounts_server.auth(ada))
    assert r.status_code == 200
    [account] = r.json()["accounts"]
    assert account["id"] == ada.account_id
    assert account["type"] == "uk_prepaid" and account["currency"] == "GBP" and account["closed"] is False
    assert account["country_code"] == "GB" and account["created"].endswith("Z")
    assert account["owners"] == [
        {"user_id": ada.user_id, "preferred_name": "Ada Lovelace", "preferred_first_name": "Ada"}
    ]
    r = await client.get("/accounts", params={"account_type": "uk_retail"}, headers=accounts_server.auth(ada))
    assert r.json() == {"accounts": []}


async def test_balance_is_available_money_and_spend_today(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=10_000)
    r = await client.post(
        "/internal/holds",
        json={"account_id": ada.account_id, "network_txn_id": "n1", "amount": 1_915, "currency": "GBP"},
        headers=accounts_server.internal_headers,
    )
    assert r.status_code == 200 and r.json()["hold"]["status"] == "active"
    r = await client.get("/balance", params={"account_id": ada.account_id}, headers=accounts_server.auth(ada))
    assert r.status_code == 200
    body = r.json()
    assert (body["balance"], body["total_balance"], body["currency"]) == (8_085, 8_085, "GBP")
    assert body["spend_today"] == -1_915


async def test_nobody_reads_or_moves_another_customers_money(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=10_000)
    eve = await create_customer(db, ledger, name="Eve")
    r = await client.get("/balance", params={"account_id": ada.account_id}, headers=accounts_server.auth(eve))
    assert r.status_code == 403 and r.json()["code"] == "forbidden.insufficient_permissions"
    assert "balance" not in r.json()
    r = await client.post(
        "/topup",
        data={"account_id": ada.account_id, "amount": "100", "currency": "GBP"},
        headers={**accounts_server.auth(eve), "Idempotency-Key": "k1"},
    )
    assert r.status_code == 403
    r = await client.get("/balance", params={"account_id": "acc_nope"}, headers=accounts_server.auth(eve))
    assert r.status_code == 404 and r.json()["code"] == "not_found.account"


async def test_a_token_is_required(client: httpx.AsyncClient) -> None:
    r = await client.get("/accounts")
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized.bad_access_token.missing"
    assert r.json()["error"] == "invalid_token"
    r = await client.get("/accounts", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401 and r.json()["code"].startswith("unauthorized.bad_access_token")


async def test_topup_replays_for_the_same_key_and_refuses_a_changed_body(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger)
    headers = {**accounts_server.auth(ada), "Idempotency-Key": "topup-1"}
    form = {"account_id": ada.account_id, "amount": "2500", "currency": "GBP"}
    first = await client.post("/topup", data=form, headers=headers)
    again = await client.post("/topup", data=form, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.json()["balance"] == 2_500
    changed = await client.post("/topup", data={**form, "amount": "2600"}, headers=headers)
    assert changed.status_code == 422 and changed.json()["code"] == "unprocessable.idempotency_key_reused"
    r = await client.get("/balance", params={"account_id": ada.account_id}, headers=accounts_server.auth(ada))
    assert r.json()["balance"] == 2_500


async def test_topup_input_errors_are_typed_and_write_nothing(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger)
    auth = accounts_server.auth(ada)
    form = {"account_id": ada.account_id, "amount": "2500", "currency": "GBP"}
    cases = [
        ({}, form, 400, "bad_request.missing_idempotency_key"),
        ({"Idempotency-Key": "a"}, {**form, "amount": "25.00"}, 400, "bad_request.bad_param.amount"),
        ({"Idempotency-Key": "b"}, {**form, "amount": "-5"}, 400, "bad_request.bad_param.amount"),
        ({"Idempotency-Key": "c"}, {**form, "amount": str(10**9 + 1)}, 400, "bad_request.bad_param.amount"),
        ({"Idempotency-Key": "d"}, {**form, "currency": "XXX"}, 400, "bad_request.bad_param.currency"),
        ({"Idempotency-Key": "e"}, {**form, "currency": "EUR"}, 400, "bad_request.bad_param.currency"),
        ({"Idempotency-Key": "f"}, {"amount": "100", "currency": "GBP"}, 400, "bad_request.missing_param"),
    ]
    for extra, data, status, code in cases:
        r = await client.post("/topup", data=data, headers={**auth, **extra})
        assert (r.status_code, r.json()["code"]) == (status, code), (data, r.text)
    # A refused request does not burn its key: the corrected request with key "a" goes through.
    r = await client.post("/topup", data=form, headers={**auth, "Idempotency-Key": "a"})
    assert r.status_code == 201 and r.json()["balance"] == 2_500


async def test_internal_routes_need_the_internal_token(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=100)
    hold = {"account_id": ada.account_id, "network_txn_id": "n1", "amount": 50, "currency": "GBP"}
    r = await client.post("/internal/holds", json=hold, headers=accounts_server.auth(ada))
    assert r.status_code == 401 and r.json()["code"] == "unauthorized.internal"
    r = await client.post(
        "/internal/holds", json={**hold, "amount": 0}, headers=accounts_server.internal_headers
    )
    assert r.status_code == 400 and r.json()["code"] == "bad_request.bad_param"
