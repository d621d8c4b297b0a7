"""Attachments and receipts (issue 23, decision 0037) on the transactions service on a real socket, with
the embedded object store in a temporary folder: every call, and every bad input a typed 4xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from services.transactions.storage import LocalStore
from shared.config import BankSettings
from tests.transactions.conftest import (
    ACC,
    OTHER,
    OTHER_ACC,
    PNG,
    PUBLIC,
    USER,
    AttachmentsClient,
    Feed,
    start_service,
)
from tests.transactions.events import Authorisation, account_created, at, topup

BAD, NO_TX = "bad_request.bad_param", "not_found.transaction"


class Files(AttachmentsClient):
    async def uploaded(self, user_id: str, data: bytes = PNG, file_type: str = "image/png") -> dict[str, str]:
        """A file uploaded through the embedded store's signed URL: its `upload_url` and `file_url`."""
        urls = await self.upload(user_id, data, file_type, name="receipt.png")
        r = await self.http.put(
            self.local(urls["upload_url"]), content=data, headers={"Content-Type": file_type}
        )
        assert r.status_code == 200, r.text
        return urls


@pytest_asyncio.fixture(loop_scope="session")
async def files(feed: Feed, settings: BankSettings, tmp_path: Path) -> AsyncIterator[Files]:
    key, identity, app = await start_service(
        settings, storage_folder=str(tmp_path / "store"), storage_public_url=PUBLIC
    )
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
            await feed.apply(
                account_created(ACC, USER), account_created(OTHER_ACC, OTHER),
                topup(ACC, 5_000, 5_000, at(0)),
                topup(OTHER_ACC, 5_000, 5_000, at(0)),
            )  # fmt: skip
            coffee = Authorisation(ACC, 1_915)
            await feed.apply(coffee.hold(3_085, at(1)), coffee.approved(at(1)))
            yield Files(feed, key, http, app.url)
    finally:
        await asyncio.gather(app.stop(), identity.stop())


async def test_a_file_is_uploaded_attached_read_and_detached(files: Files) -> None:
    tx = await files.transaction(USER)
    urls = await files.uploaded(USER)
    assert urls["file_url"].startswith(f"{PUBLIC}/attachment/files/file_")
    r = await files.post("/attachment/register", USER, external_id=tx["id"], file_url=urls["file_url"],
                         file_type="image/png")  # fmt: skip
    assert r.status_code == 200, r.text
    attachment = r.json()["attachment"]
    assert attachment["id"].startswith("attach_") and attachment["external_id"] == tx["id"]
    assert (attachment["user_id"], attachment["file_url"], attachment["file_type"]) == (
        USER, urls["file_url"], "image/png",
    )  # fmt: skip
    again = await files.post("/attachment/register", USER, external_id=tx["id"], file_url=urls["file_url"],
                             file_type="image/png")  # fmt: skip
    assert again.json() == r.json()
    shown = (await files.http.get(f"/transactions/{tx['id']}", headers=files.auth(USER))).json()[
        "transaction"
    ]
    assert shown["attachments"] == [attachment] and shown["updated"] >= tx["updated"]
    [update] = [e["data"] for e in await files.feed.published("transaction.updated")]
    assert update["change"] == "annotated" and update["transaction"]["attachments"] == [attachment]

    r = await files.http.get(files.local(urls["file_url"]), headers=files.auth(USER))
    assert r.status_code == 302, r.text
    blob = await files.http.get(files.local(r.headers["location"]))
    assert blob.status_code == 200 and blob.content == PNG and blob.headers["content-type"] == "image/png"
    r = await files.http.get(files.local(urls["file_url"]), headers=files.auth(OTHER))
    assert r.status_code == 404 and r.json()["code"] == "not_found.file"

    for _ in range(2):  # again is a no-op
        r = await files.post("/attachment/deregister", USER, id=attachment["id"])
        assert (r.status_code, r.json()) == (200, {})
    shown = (await files.http.get(f"/transactions/{tx['id']}", headers=files.auth(USER))).json()[
        "transaction"
    ]
    assert shown["attachments"] is None


async def test_bad_uploads_and_registrations_get_a_typed_4xx(files: Files) -> None:
    tx, theirs = await files.transaction(USER), await files.transaction(OTHER)
    for form, code in (
        ({"file_type": "text/plain", "content_length": "10"}, "bad_request.bad_param.file_type"),
        ({"file_type": "image/png", "content_length": str(10 * 1024 * 1024 + 1)}, f"{BAD}.content_length"),
        ({"file_type": "image/png", "content_length": "0"}, "bad_request.bad_param.content_length"),
        ({"file_type": "image/png", "content_length": "1.5"}, "bad_request.bad_param.content_length"),
        ({"file_type": "image/png", "content_length": "10", "file_name": "../x"}, f"{BAD}.file_name"),
    ):  # fmt: skip
        r = await files.post("/attachment/upload", USER, **{"file_name": "a.png", **form})
        assert (r.status_code, r.json()["code"]) == (400, code), (form, r.text)

    r = await files.post("/attachment/upload", USER, file_name="a.pdf", file_type="application/pdf",
                         content_length="100")  # fmt: skip
    urls = r.json()
    put = files.local(urls["upload_url"])
    for body, kind, status, code in (
        (b"x" * 100, "image/png", 400, "bad_request.content_type"),
        (b"x" * 99, "application/pdf", 400, "bad_request.content_length"),
        (b"x" * 101, "application/pdf", 400, "bad_request.content_length"),
    ):
        r = await files.http.put(put, content=body, headers={"Content-Type": kind})
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
    tampered = put.replace("signature=", "signature=0")
    r = await files.http.put(tampered, content=b"x" * 100, headers={"Content-Type": "application/pdf"})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.bad_signature")
    other_key = put.replace("/attachment/blobs/file_", "/attachment/blobs/file_0")
    r = await files.http.put(other_key, content=b"x" * 100, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 403
    key = urls["file_url"].removeprefix(f"{PUBLIC}/attachment/files/")
    store = LocalStore(Path("/nonexistent"), PUBLIC, "dev-storage-secret", 900)
    expired = int(time.time()) - 1
    r = await files.http.put(
        f"{files.url}/attachment/blobs/{key}?expires={expired}"
        f"&signature={store._signature('PUT', key, expired)}",
        content=b"x" * 100, headers={"Content-Type": "application/pdf"},
    )  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.url_expired")
    r = await files.http.get(put)  # an upload URL is not a download URL
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.bad_signature")

    register = {"external_id": tx["id"], "file_url": urls["file_url"], "file_type": "application/pdf"}
    r = await files.post("/attachment/register", USER, **register)
    assert (r.status_code, r.json()["code"]) == (409, "conflict.file_not_uploaded")
    mine = await files.uploaded(USER)
    for form, user, status, code in (
        ({**register, "file_url": mine["file_url"], "external_id": theirs["id"]}, USER, 404, NO_TX),
        ({**register, "file_url": mine["file_url"], "external_id": "tx_nope"}, USER, 404, NO_TX),
        ({**register, "file_url": "https://evil.example/x.png"}, USER, 400, f"{BAD}.file_url"),
        ({**register, "file_url": mine["file_url"], "external_id": theirs["id"]}, OTHER, 404,
         "not_found.file"),
        ({**register, "file_url": mine["file_url"], "file_type": "image/gif"}, USER, 400, f"{BAD}.file_type"),
        ({**register, "file_url": mine["file_url"], "file_type": "text/html"}, USER, 400, f"{BAD}.file_type"),
    ):  # fmt: skip
        r = await files.post("/attachment/register", user, **form)
        assert (r.status_code, r.json()["code"]) == (status, code), (form, r.text)
    r = await files.post("/attachment/deregister", OTHER, id="attach_nope")
    assert (r.status_code, r.json()["code"]) == (404, "not_found.attachment")
    assert (await files.transaction(OTHER))["attachments"] is None


def receipt(tx_id: str, external_id: str = "order-1", total: int = 1_915, **extra: Any) -> dict[str, Any]:
    return {
        "transaction_id": tx_id, "external_id": external_id, "total": total, "currency": "GBP",
        "items": [
            {"description": "Flat white", "amount": 315, "currency": "GBP", "quantity": 1, "unit": "",
             "tax": 53, "sub_items": [{"description": "Oat milk", "amount": 0, "currency": "GBP",
                                       "quantity": 1,
                                       "unit": "", "tax": 0}]},
            {"description": "Beans 1kg", "amount": 1_600, "currency": "GBP", "quantity": 1, "unit": "kg",
             "tax": 0, "sub_items": []},
        ],
        "taxes": [{"description": "VAT", "amount": 53, "currency": "GBP", "tax_number": "GB123"}],
        "payments": [{"type": "card", "amount": 1_915, "currency": "GBP", "last_four": "4242"}],
        "merchant": {"name": "Brightbird Espresso", "online": False, "store_postcode": "N1 3JD"},
        **extra,
    }  # fmt: skip


async def test_a_receipt_is_added_replaced_read_and_deleted_by_the_owner_only(files: Files) -> None:
    tx = await files.transaction(USER)
    me = files.auth(USER)
    r = await files.http.put("/transaction-receipts", json=receipt(tx["id"]), headers=me)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["receipt_id"].startswith("receipt_") and first["total_matches_items"] is True
    r = await files.http.get("/transaction-receipts", params={"external_id": "order-1"}, headers=me)
    stored = r.json()["receipt"]
    assert (stored["id"], stored["transaction_id"], stored["total"]) == (first["receipt_id"], tx["id"], 1_915)
    assert stored["items"][0]["sub_items"][0]["description"] == "Oat milk" and stored["merchant"]["name"]
    shown = (await files.http.get(f"/transactions/{tx['id']}", headers=me)).json()["transaction"]
    assert shown["receipts"] == [{"id": first["receipt_id"], "external_id": "order-1"}]

    # The same external_id replaces it; items that do not add up are accepted and flagged.
    r = await files.http.put("/transaction-receipts", json=receipt(tx["id"], total=2_000), headers=me)
    assert r.json() == {"receipt_id": first["receipt_id"], "items_total": 1_915, "total_matches_items": False}
    r = await files.http.get("/transaction-receipts", params={"external_id": "order-1"}, headers=me)
    assert r.json()["receipt"]["total"] == 2_000

    other = files.auth(OTHER)
    theirs = await files.transaction(OTHER)
    for request, status, code in (
        (files.http.get("/transaction-receipts", params={"external_id": "order-1"}, headers=other), 404,
         "not_found.receipt"),
        (files.http.delete("/transaction-receipts", params={"external_id": "order-1"}, headers=other), 404,
         "not_found.receipt"),
        (files.http.put("/transaction-receipts", json=receipt(tx["id"], "mine"), headers=other), 404,
         "not_found.transaction"),
        (files.http.put("/transaction-receipts", json=receipt(theirs["id"], "x"), headers=me), 404,
         "not_found.transaction"),
        (files.http.put("/transaction-receipts", json=receipt(tx["id"], total=19.15), headers=me), 400,
         "bad_request.bad_param"),
        (files.http.put("/transaction-receipts", json=receipt(tx["id"], currency="XXX"), headers=me), 400,
         "bad_request.bad_param.currency"),
        (files.http.put("/transaction-receipts", json=receipt(tx["id"], external_id=""), headers=me), 400,
         "bad_request.bad_param"),
        (files.http.put("/transaction-receipts", content=b"{",
                        headers={**me, "Content-Type": "application/json"}),
         400, "bad_request.malformed_message"),
        (files.http.put("/transaction-receipts", json={"total": 1}, headers=me), 400,
         "bad_request.missing_param"),
    ):  # fmt: skip
        r = await request
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
    r = await files.http.get("/transaction-receipts", params={"external_id": "order-1"}, headers=me)
    assert r.json()["receipt"]["total"] == 2_000  # nothing the refused requests said changed it

    r = await files.http.delete("/transaction-receipts", params={"external_id": "order-1"}, headers=me)
    assert (r.status_code, r.json()) == (200, {})
    r = await files.http.get("/transaction-receipts", params={"external_id": "order-1"}, headers=me)
    assert r.status_code == 404
    shown = (await files.http.get(f"/transactions/{tx['id']}", headers=me)).json()["transaction"]
    assert shown["receipts"] == []
