"""Issue 23 through the gateway, on a whole bank (every service its own process, real PostgreSQL): pots,
payments between customers, attachments and receipts, each with the feed, pushes and webhooks it makes,
and `bank check` sound afterwards."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest_asyncio

from bank.checker import Customer, settle
from bank.cluster import BankCluster
from bank.faults import WebhookReceiver
from tests.security.support import Person, sign_up
from tests.support.waiting import eventually

ENV = {
    "WEBHOOKS_ALLOW_HTTP": "true",
    "WEBHOOKS_ALLOW_NETWORKS": '["127.0.0.1/32"]',
    "BANK_LOG_LEVEL": "WARNING",
    "CARDS_ACCOUNTS_DEADLINE_MS": "2000",
}


@dataclass
class Bank:
    cluster: BankCluster
    receiver: WebhookReceiver
    jane: Person
    sam: Person
    http: httpx.AsyncClient

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.cluster.libpq_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def call(self, who: Person, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**who.auth, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def feed(self, who: Person, scheme: str, count: int) -> list[dict[str, Any]]:
        async def found() -> list[dict[str, Any]] | None:
            r = await self.call(who, "GET", "/transactions", params={"account_id": who.account_id})
            items = [t for t in r.json().get("transactions", []) if t["scheme"] == scheme]
            return items if len(items) >= count else None

        return list(await eventually(found, 30, f"{count} {scheme} transactions for {who.name}"))


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def bank() -> AsyncIterator[Bank]:
    folder = Path(tempfile.mkdtemp(prefix="bank-issue23-"))
    receiver = WebhookReceiver()
    await receiver.start()
    cluster = BankCluster(folder, env=ENV)
    try:
        async with cluster:
            jane = await sign_up(cluster.accounts_direct, cluster.base_url, "Jane")
            sam = await sign_up(cluster.accounts_direct, cluster.base_url, "Sam")
            async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
                for i, p in enumerate((jane, sam)):
                    r = await http.post(
                        "/webhooks",
                        data={"account_id": p.account_id, "url": f"{receiver.url}/{i}"},
                        headers=p.auth,
                    )
                    assert r.status_code in (200, 201), r.text
                    r = await http.post(
                        "/devices", data={"platform": "apns", "token": f"{i + 7:02d}" * 32}, headers=p.auth
                    )
                    assert r.status_code in (200, 201), r.text
                yield Bank(cluster, receiver, jane, sam, http)
    finally:
        await receiver.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def test_pots_through_the_gateway(bank: Bank) -> None:
    jane = bank.jane
    r = await bank.call(
        jane, "POST", "/pots",
        data={"current_account_id": jane.account_id, "name": "Holiday", "goal_amount": "90000"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    pot = r.json()
    form = {"source_account_id": jane.account_id, "amount": "2500", "dedupe_id": "gw-pot-1"}
    first = await bank.call(jane, "PUT", f"/pots/{pot['id']}/deposit", data=form)
    again = await bank.call(jane, "PUT", f"/pots/{pot['id']}/deposit", data=form)
    assert first.status_code == 200 and first.json() == again.json() and first.json()["balance"] == 2500
    r = await bank.call(
        jane, "PUT", f"/pots/{pot['id']}/withdraw",
        data={"destination_account_id": jane.account_id, "amount": "500", "dedupe_id": "gw-pot-2"},
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["balance"] == 2000, r.text
    for data, code in (
        ({**form, "dedupe_id": "gw-pot-3", "amount": "0"}, "bad_request.bad_param.amount"),
        ({**form, "dedupe_id": "gw-pot-3", "amount": "10.5"}, "bad_request.bad_param.amount"),
        ({**form, "dedupe_id": "gw-pot-3", "amount": "99999999"}, "insufficient_funds.account"),
        ({**form, "amount": "2600"}, "unprocessable.idempotency_key_reused"),
    ):
        r = await bank.call(jane, "PUT", f"/pots/{pot['id']}/deposit", data=data)
        assert r.status_code in (400, 422) and r.json()["code"] == code, r.text
    r = await bank.call(bank.sam, "PUT", f"/pots/{pot['id']}/deposit", data=form)
    assert r.status_code == 403, r.text
    r = await bank.call(jane, "DELETE", f"/pots/{pot['id']}")
    assert r.status_code == 409 and r.json()["code"] == "conflict.pot_not_empty"
    balance = (await bank.call(jane, "GET", "/balance", params={"account_id": jane.account_id})).json()
    assert balance["total_balance"] - balance["balance"] == 2000
    r = await bank.call(jane, "GET", "/pots", params={"current_account_id": jane.account_id})
    assert [p["balance"] for p in r.json()["pots"]] == [2000]

    moves = await bank.feed(jane, "uk_retail_pot", 2)
    assert sorted(t["amount"] for t in moves) == [-2500, 500]
    assert {t["metadata"]["pot_id"] for t in moves} == {pot["id"]}


async def test_a_payment_between_customers_through_the_gateway(bank: Bank) -> None:
    jane, sam = bank.jane, bank.sam
    form = {
        "source_account_id": jane.account_id, "amount": "1000", "currency": "GBP", "recipient": sam.email,
        "reference": "pizza", "dedupe_id": "gw-pay-1",
    }  # fmt: skip
    before = [
        (await bank.call(p, "GET", "/balance", params={"account_id": p.account_id})).json()["balance"]
        for p in (jane, sam)
    ]
    r = await bank.call(jane, "POST", "/payments", data=form)
    assert r.status_code == 201, r.text
    assert r.json()["payment"]["recipient"] == {"user_id": sam.user_id, "name": sam.name}
    assert (await bank.call(jane, "POST", "/payments", data=form)).json() == r.json()
    for data, status in (
        ({**form, "dedupe_id": "gw-pay-2", "recipient": jane.email}, 422),
        ({**form, "dedupe_id": "gw-pay-2", "amount": "999999999"}, 422),
        ({**form, "dedupe_id": "gw-pay-2", "currency": "EUR"}, 400),
        ({**form, "dedupe_id": "gw-pay-2", "source_account_id": sam.account_id}, 403),
    ):
        r = await bank.call(jane, "POST", "/payments", data=data)
        assert r.status_code == status and "." in r.json()["code"], r.text
    after = [
        (await bank.call(p, "GET", "/balance", params={"account_id": p.account_id})).json()["balance"]
        for p in (jane, sam)
    ]
    assert after == [before[0] - 1000, before[1] + 1000]

    [out], [into] = await bank.feed(jane, "p2p_payment", 1), await bank.feed(sam, "p2p_payment", 1)
    assert (out["amount"], into["amount"]) == (-1000, 1000)
    assert out["counterparty"] == {"user_id": sam.user_id, "name": sam.name}
    assert into["counterparty"] == {"user_id": jane.user_id, "name": jane.name}

    async def pushed() -> list[str] | None:
        async with httpx.AsyncClient(timeout=10) as c:
            got = (await c.get(f"{bank.cluster.push_url}/_fake/received")).json()["received"]
        bodies = [str(item.get("body") or item.get("alert", {}).get("body", "")) for item in got]
        wanted = [b for b in bodies if b.startswith("💸")]
        return wanted if len(wanted) >= 2 else None

    bodies = await eventually(pushed, 30, "a push to each side of the payment")
    assert f"💸 {jane.name} sent you £10.00: pizza" in bodies
    assert f"💸 You sent {sam.name} £10.00: pizza" in bodies

    async def delivered() -> list[asyncpg.Record] | None:
        rows = await bank.sql(
            "SELECT d.webhook_id, d.payload FROM webhooks.deliveries d"
            " WHERE d.event_type = 'transaction.created' AND d.status = 'succeeded'"
        )
        hits = [r for r in rows if json.loads(r["payload"])["data"]["scheme"] == "p2p_payment"]
        return hits if len(hits) >= 2 else None

    hooks = await eventually(delivered, 30, "transaction.created delivered to both accounts' webhooks")
    assert len({r["webhook_id"] for r in hooks}) == 2


async def test_attachments_and_receipts_through_the_gateway(bank: Bank) -> None:
    jane, sam = bank.jane, bank.sam
    [tx] = await bank.feed(jane, "p2p_payment", 1)
    pdf = b"%PDF-1.4\n" + b"0" * 2000
    r = await bank.call(
        jane, "POST", "/attachment/upload",
        data={"file_name": "receipt.pdf", "file_type": "application/pdf", "content_length": str(len(pdf))},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    urls = r.json()
    assert urls["upload_url"].startswith(bank.cluster.base_url + "/attachment/blobs/")
    r = await bank.http.put(urls["upload_url"], content=pdf, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 200, r.text
    r = await bank.http.put(
        urls["upload_url"] + "0", content=pdf, headers={"Content-Type": "application/pdf"}
    )
    assert r.status_code == 403 and r.json()["code"] == "forbidden.bad_signature"
    register = {"external_id": tx["id"], "file_url": urls["file_url"], "file_type": "application/pdf"}
    r = await bank.call(sam, "POST", "/attachment/register", data=register)
    assert r.status_code == 404, r.text
    r = await bank.call(jane, "POST", "/attachment/register", data=register)
    assert r.status_code == 200, r.text
    attachment = r.json()["attachment"]
    shown = (await bank.call(jane, "GET", f"/transactions/{tx['id']}")).json()["transaction"]
    assert [a["id"] for a in shown["attachments"]] == [attachment["id"]]
    r = await bank.call(jane, "GET", urls["file_url"].removeprefix(bank.cluster.base_url))
    assert r.status_code == 302, r.text
    assert (await bank.http.get(r.headers["location"])).content == pdf
    assert (
        await bank.call(sam, "GET", urls["file_url"].removeprefix(bank.cluster.base_url))
    ).status_code == 404
    r = await bank.call(jane, "POST", "/attachment/deregister", data={"id": attachment["id"]})
    assert (r.status_code, r.json()) == (200, {})
    big = {"file_name": "x.png", "file_type": "image/png", "content_length": str(11 * 1024 * 1024)}
    assert (await bank.call(jane, "POST", "/attachment/upload", data=big)).status_code == 400

    receipt = {
        "transaction_id": tx["id"], "external_id": "gw-r-1", "total": 1000, "currency": "GBP",
        "items": [{"description": "Pizza", "amount": 900, "currency": "GBP", "quantity": 1, "unit": "",
                   "tax": 0, "sub_items": []}],
        "taxes": [], "payments": [], "merchant": {"name": "Sam"},
    }  # fmt: skip
    r = await bank.call(jane, "PUT", "/transaction-receipts", json=receipt)
    assert r.status_code == 200 and r.json()["total_matches_items"] is False, r.text
    r = await bank.call(jane, "GET", "/transaction-receipts", params={"external_id": "gw-r-1"})
    assert r.json()["receipt"]["items"][0]["description"] == "Pizza"
    r = await bank.call(sam, "GET", "/transaction-receipts", params={"external_id": "gw-r-1"})
    assert r.status_code == 404
    r = await bank.call(jane, "DELETE", "/transaction-receipts", params={"external_id": "gw-r-1"})
    assert r.status_code == 200


async def test_bank_check_is_sound_after_it_all(bank: Bank) -> None:
    customers = [Customer(p.account_id, p.token) for p in (bank.jane, bank.sam)]
    report = await settle(
        bank.cluster.database_url, limit=30, gateway_url=bank.cluster.base_url, customers=customers
    )
    assert report.ok, report.to_dict()
    assert {"transfers_conserve", "transfers_in_feed", "balance_is_postings"} <= set(report.checked)
    assert report.figures["transfers"] >= 3
