"""One real bank for the attacker's checklist and the fuzzer: every service an OS process, reached
through the gateway exactly as a client would, with real (not lifted) sign-in rate limits.

The per-user "default" class is lifted so the sweeps below are not throttled; the "auth" class (per
client IP: sign-up, sign-in) keeps its shipped limits for the flood test.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from bank.cluster import BankCluster
from tests.security.support import Person, authorisation, operations, sign_up
from tests.support.waiting import eventually

LIMITS = json.dumps(
    {
        "default": {"rate": 100_000, "burst": 100_000},
        "auth": {"rate": 2, "burst": 20},  # shipped default: the flood test proves it
        "network": {"rate": 100_000, "burst": 100_000},
        "ops": {"rate": 100_000, "burst": 100_000},
    }
)


@dataclass
class SecurityBank:
    cluster: BankCluster
    a: Person
    b: Person
    openapi: dict[str, Any]

    @property
    def url(self) -> str:
        return self.cluster.base_url


async def _merged_openapi(url: str) -> dict[str, Any]:
    """The gateway's merged document once every upstream is in it."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def complete() -> dict[str, Any] | None:
            r = await c.get("/openapi.json")
            doc = r.json() if r.status_code == 200 else {}
            return doc if doc and "Incomplete" not in doc.get("info", {}).get("description", "") else None

        return await eventually(complete, 60, "a complete merged /openapi.json")


async def _give_b_one_of_everything(bank: BankCluster, b: Person) -> None:
    """B gets a card payment (a feed transaction), a webhook, a device, a feed item: ids of every kind."""
    async with httpx.AsyncClient(base_url=bank.base_url, timeout=30, headers=b.auth) as c:
        r = await c.post(
            "/network/authorisations", json=authorisation(b), headers={"x-network-key": "dev-network-key"}
        )
        assert r.json().get("response_code") == "00", r.text
        r = await c.post("/webhooks", data={"account_id": b.account_id, "url": "https://93.184.215.14/b"})
        if r.status_code in (200, 201):
            b.ids["webhook"] = r.json()["webhook"]["id"]
        r = await c.post("/devices", data={"platform": "apns", "token": "b" * 64})
        if r.status_code in (200, 201):
            b.ids["device"] = r.json()["device"]["id"]
        r = await c.post(
            "/feed",
            data={
                "account_id": b.account_id,
                "type": "basic",
                "params[title]": "B's secret note",
                "params[image_url]": "https://example.com/i.png",
            },
        )

        async def transaction() -> str | None:
            r = await c.get("/transactions", params={"account_id": b.account_id})
            items = r.json().get("transactions", []) if r.status_code == 200 else []
            return items[0]["id"] if items else None

        try:
            b.ids["transaction"] = await eventually(transaction, 30, "B's card payment in the feed")
        except AssertionError:
            pass  # the feed service is not there (yet): the sweep uses made-up transaction ids
        await _give_b_a_pot_an_attachment_and_a_receipt(c, b)
        if "webhook" in b.ids:
            r = await c.get(f"/webhooks/{b.ids['webhook']}/deliveries")
            items = r.json().get("deliveries", []) if r.status_code == 200 else []
            if items:
                b.ids["delivery"] = items[0]["id"]


async def _give_b_a_pot_an_attachment_and_a_receipt(c: httpx.AsyncClient, b: Person) -> None:
    """Issue 23's kinds of id: a pot (with money in it), an attachment on B's transaction, a receipt."""
    r = await c.post(
        "/pots", data={"current_account_id": b.account_id, "name": "B's jar"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    b.ids["pot"] = r.json()["id"]
    r = await c.put(
        f"/pots/{b.ids['pot']}/deposit",
        data={"source_account_id": b.account_id, "amount": "100", "dedupe_id": uuid.uuid4().hex},
    )
    assert r.status_code == 200, r.text
    if "transaction" not in b.ids:
        return
    png = b"\x89PNG\r\n\x1a\n" + b"b" * 100
    r = await c.post(
        "/attachment/upload",
        data={"file_name": "b.png", "file_type": "image/png", "content_length": str(len(png))},
    )
    assert r.status_code == 200, r.text
    urls = r.json()
    r = await c.put(urls["upload_url"], content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    r = await c.post(
        "/attachment/register",
        data={"external_id": b.ids["transaction"], "file_url": urls["file_url"], "file_type": "image/png"},
    )
    assert r.status_code == 200, r.text
    b.ids["attachment"] = r.json()["attachment"]["id"]
    b.ids["file"] = urls["file_url"]
    b.ids["receipt"] = f"b-receipt-{uuid.uuid4().hex[:8]}"
    receipt = {
        "transaction_id": b.ids["transaction"], "external_id": b.ids["receipt"], "total": 1915,
        "currency": "GBP", "items": [{"description": "B's coffee", "amount": 1915, "currency": "GBP"}],
    }  # fmt: skip
    r = await c.put("/transaction-receipts", json=receipt)
    assert r.status_code == 200, r.text


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def security_bank() -> AsyncIterator[SecurityBank]:
    folder = Path(tempfile.mkdtemp(prefix="bank-security-"))
    # Accounts gets 2 s to place a hold (150 ms by default): on a loaded CI machine a slow first hold
    # would answer 91, and these tests are about what is answered, not how fast.
    env = {"GATEWAY_RATE_LIMITS": LIMITS, "BANK_LOG_LEVEL": "INFO", "CARDS_ACCOUNTS_DEADLINE_MS": "2000"}
    cluster = BankCluster(folder, env=env)
    async with cluster:
        a = await sign_up(cluster.accounts_direct, cluster.base_url, "Alice")
        b = await sign_up(cluster.accounts_direct, cluster.base_url, "Bob")
        await _give_b_one_of_everything(cluster, b)
        doc = await _merged_openapi(cluster.base_url)
        yield SecurityBank(cluster, a, b, doc)
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["SecurityBank", "operations"]
