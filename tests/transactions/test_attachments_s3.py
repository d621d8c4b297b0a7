"""Attachments in S3 (decision 0046): the transactions service with `TRANSACTIONS_STORAGE=s3` against a real
S3-compatible server, S3Proxy (Java, from Maven Central, started as the Kafka broker is), which checks
every SigV4 signature, signed header and expiry itself. The client's bytes go to S3Proxy through the
presigned URL and never through the bank."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError

from bank.infra.ports import free_port
from bank.infra.s3proxy import REGION, S3Proxy
from services.transactions.config import TransactionsSettings
from services.transactions.s3 import S3Store
from services.transactions.storage import LocalStore, open_store
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

BUCKET = "bank-attachments"
PDF = b"%PDF-1.7\n" + b"x" * 991


@pytest.fixture(scope="module")
def s3proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Proxy]:
    """A real S3Proxy on its filesystem backend, with the bucket. Never skipped: if it cannot start (no
    Java, no Maven, no jar), the test fails."""
    server = S3Proxy(tmp_path_factory.mktemp("s3proxy"))
    server.start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


def s3_settings(server: S3Proxy, **overrides: Any) -> dict[str, Any]:
    return {
        "storage": "s3", "storage_s3_endpoint": server.endpoint, "storage_s3_bucket": BUCKET,
        "storage_s3_region": REGION, "storage_s3_access_key": server.access_key,
        "storage_s3_secret_key": server.secret_key, "storage_public_url": PUBLIC, **overrides,
    }  # fmt: skip


@dataclass
class Files(AttachmentsClient):
    s3: httpx.AsyncClient  # anywhere: the presigned URLs are absolute


def s3_error(answer: httpx.Response) -> tuple[int, str]:
    """S3's typed refusal: the status and the XML error's Code."""
    text = answer.text
    code = text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else text[:200]
    return answer.status_code, code


@pytest_asyncio.fixture(loop_scope="session")
async def files(feed: Feed, settings: BankSettings, s3proxy: S3Proxy) -> AsyncIterator[Files]:
    key, identity, app = await start_service(settings, **s3_settings(s3proxy))
    try:
        async with (
            httpx.AsyncClient(base_url=app.url, timeout=30) as http,
            httpx.AsyncClient(timeout=30) as s3,
        ):
            await feed.apply(
                account_created(ACC, USER), account_created(OTHER_ACC, OTHER),
                topup(ACC, 5_000, 5_000, at(0)), topup(OTHER_ACC, 5_000, 5_000, at(0)),
            )  # fmt: skip
            coffee = Authorisation(ACC, 1_915)
            await feed.apply(coffee.hold(3_085, at(1)), coffee.approved(at(1)))
            yield Files(feed, key, http, app.url, s3)
    finally:
        await asyncio.gather(app.stop(), identity.stop())


async def test_a_file_goes_to_s3_through_its_presigned_url_is_attached_and_read_back(
    files: Files, s3proxy: S3Proxy
) -> None:
    tx = await files.transaction(USER)
    urls = await files.upload(USER, PNG, "image/png")
    assert urls["file_url"].startswith(f"{PUBLIC}/attachment/files/file_")
    put = urls["upload_url"]
    assert put.startswith(f"{s3proxy.endpoint}/{BUCKET}/file_") and "X-Amz-Signature=" in put
    assert "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost" in put

    # Not uploaded yet: the service's signed HEAD finds nothing.
    register = {"external_id": tx["id"], "file_url": urls["file_url"], "file_type": "image/png"}
    r = await files.post("/attachment/register", USER, **register)
    assert (r.status_code, r.json()["code"]) == (409, "conflict.file_not_uploaded")

    r = await files.s3.put(put, content=PNG, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    key = urls["file_url"].removeprefix(f"{PUBLIC}/attachment/files/")
    assert (s3proxy.data_dir / "objects" / BUCKET / key).read_bytes() == PNG  # in S3Proxy's store

    r = await files.post("/attachment/register", USER, **register)
    assert r.status_code == 200, r.text
    attachment = r.json()["attachment"]
    assert attachment["id"].startswith("attach_") and attachment["external_id"] == tx["id"]
    assert (attachment["file_url"], attachment["file_type"]) == (urls["file_url"], "image/png")
    shown = (await files.http.get(f"/transactions/{tx['id']}", headers=files.auth(USER))).json()
    assert shown["transaction"]["attachments"] == [attachment]

    r = await files.http.get(files.local(urls["file_url"]), headers=files.auth(USER))
    assert r.status_code == 302, r.text
    download = r.headers["location"]
    assert download.startswith(f"{s3proxy.endpoint}/{BUCKET}/{key}?")
    blob = await files.s3.get(download)
    assert blob.status_code == 200 and blob.content == PNG and blob.headers["content-type"] == "image/png"
    r = await files.http.get(files.local(urls["file_url"]), headers=files.auth(OTHER))
    assert (r.status_code, r.json()["code"]) == (404, "not_found.file")

    r = await files.post("/attachment/deregister", USER, id=attachment["id"])
    assert (r.status_code, r.json()) == (200, {})
    shown = (await files.http.get(f"/transactions/{tx['id']}", headers=files.auth(USER))).json()
    assert shown["transaction"]["attachments"] is None


async def test_s3_refuses_a_wrong_length_or_type_and_an_expired_tampered_or_misused_url(
    files: Files, s3proxy: S3Proxy
) -> None:
    for form, code in (
        ({"file_type": "text/html", "content_length": "10"}, "bad_request.bad_param.file_type"),
        ({"file_type": "image/png", "content_length": str(10 * 1024 * 1024 + 1)},
         "bad_request.bad_param.content_length"),
    ):  # fmt: skip
        # no URL is signed for these
        r = await files.post("/attachment/upload", USER, file_name="a.png", **form)
        assert (r.status_code, r.json()["code"]) == (400, code), r.text

    urls = await files.upload(USER, PDF, "application/pdf", name="invoice.pdf")
    put = urls["upload_url"]
    for body, kind in (
        (PDF, "image/png"),  # another type
        (PDF[:-1], "application/pdf"),  # shorter
        (PDF + b"!", "application/pdf"),  # longer
    ):
        r = await files.s3.put(put, content=body, headers={"Content-Type": kind})
        assert s3_error(r) == (403, "SignatureDoesNotMatch"), (kind, len(body))
    tampered = put.replace("X-Amz-Expires=900", "X-Amz-Expires=9000")
    assert tampered != put
    r = await files.s3.put(tampered, content=PDF, headers={"Content-Type": "application/pdf"})
    assert s3_error(r) == (403, "SignatureDoesNotMatch")
    other_key = put.replace(f"/{BUCKET}/file_", f"/{BUCKET}/file_0")
    r = await files.s3.put(other_key, content=PDF, headers={"Content-Type": "application/pdf"})
    assert s3_error(r) == (403, "SignatureDoesNotMatch")
    r = await files.s3.get(put)  # an upload URL is not a download URL
    assert s3_error(r) == (403, "SignatureDoesNotMatch")
    key = urls["file_url"].removeprefix(f"{PUBLIC}/attachment/files/")
    assert not (s3proxy.data_dir / "objects" / BUCKET / key).exists()  # nothing was stored

    # A URL signed an hour ago for fifteen minutes: the same signer, the clock set back.
    store = open_store(TransactionsSettings(**s3_settings(s3proxy)), "/nonexistent", PUBLIC)
    assert isinstance(store, S3Store)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    expired = store.signer.presign(
        "PUT", f"/{BUCKET}/{key}", 900, now=an_hour_ago,
        headers={"content-length": str(len(PDF)), "content-type": "application/pdf"},
    )  # fmt: skip
    r = await files.s3.put(expired, content=PDF, headers={"Content-Type": "application/pdf"})
    assert s3_error(r) == (403, "AccessDenied") and "expired" in r.text
    r = await files.s3.put(put, content=PDF, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 200, r.text  # the URL the service gave still works, exactly as announced

    # Someone else's file, and a file registered as another type: the service's own typed 4xx.
    tx, theirs = await files.transaction(USER), await files.transaction(OTHER)
    register = {"external_id": tx["id"], "file_url": urls["file_url"], "file_type": "application/pdf"}
    r = await files.post("/attachment/register", OTHER, **{**register, "external_id": theirs["id"]})
    assert (r.status_code, r.json()["code"]) == (404, "not_found.file")
    r = await files.post("/attachment/register", USER, **{**register, "file_type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param.file_type")
    r = await files.post("/attachment/register", USER, **register)
    assert r.status_code == 200, r.text
    await store.aclose()


async def test_an_unreachable_s3_is_a_typed_503_not_a_crash() -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    store = S3Store(nothing_there, BUCKET, REGION, "key", "secret", 900, timeout=2)
    try:
        with pytest.raises(Exception) as caught:
            await store.size("file_01ABCDEFGHJKMNPQRSTVWXYZ01/a.png")
        assert getattr(caught.value, "code", None) == "service_unavailable.storage"
    finally:
        await store.aclose()


def test_the_settings_pick_the_store_and_refuse_an_incomplete_s3() -> None:
    assert isinstance(open_store(TransactionsSettings(), "/tmp/data", PUBLIC), LocalStore)
    with pytest.raises(ValidationError) as caught:
        TransactionsSettings(storage="s3", storage_s3_endpoint="http://127.0.0.1:9000")
    message = str(caught.value)
    for name in ("BUCKET", "ACCESS_KEY", "SECRET_KEY"):
        assert f"TRANSACTIONS_STORAGE_S3_{name}" in message
    with pytest.raises(ValidationError, match="http"):
        TransactionsSettings(storage="s3", storage_s3_endpoint="127.0.0.1:9000", storage_s3_bucket="b",
                             storage_s3_access_key="k", storage_s3_secret_key="s")  # fmt: skip
    store = open_store(
        TransactionsSettings(storage="s3", storage_s3_endpoint="https://s3.eu-west-2.amazonaws.com",
                             storage_s3_bucket="b", storage_s3_region="eu-west-2", storage_s3_access_key="k",
                             storage_s3_secret_key="s"),
        "/tmp/data", PUBLIC,
    )  # fmt: skip
    assert isinstance(store, S3Store)
    url = store.download_url("file_01ABCDEFGHJKMNPQRSTVWXYZ01/a.png")
    assert url.startswith("https://s3.eu-west-2.amazonaws.com/b/file_01ABCDEFGHJKMNPQRSTVWXYZ01/a.png?")
    assert "%2Feu-west-2%2Fs3%2Faws4_request" in url  # the region in the credential's scope
