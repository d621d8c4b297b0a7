"""The Mondo transactions API: list, read and annotate your transactions (owner only).

Reads answer with the JSON PostgreSQL builds from each transaction's stored body (one statement, no
per-row Python); the merchant, when expanded, is joined in the same statement.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from services.transactions import repository as repo
from services.transactions import schemas
from services.transactions.config import TransactionsSettings
from services.transactions.service import Annotations, attachment_json, receipt_json
from services.transactions.storage import MAX_BYTES, LocalStore, check_type
from shared.auth import Identity, require_identity
from shared.db import Database
from shared.errors import bad_request, forbidden, not_found
from shared.web import json_body_doc, read_body, read_model

User = Annotated[Identity, Depends(require_identity)]
Expand = Annotated[list[str], Query(alias="expand[]")]
JSON = "application/json"

METADATA_FORM: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "metadata[key]=value pairs; an empty value deletes the key; metadata[notes] sets notes",
}
LIST_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"transactions": [transaction, …]}', "content": {JSON: {}}}
}
ONE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"transaction": transaction}', "content": {JSON: {}}}
}


def _no_such_transaction() -> Exception:
    return not_found("transaction", "no transaction with that id")


def public_router(db: Database, annotations: Annotations, settings: TransactionsSettings) -> APIRouter:
    api = APIRouter(tags=["transactions"])

    @api.get("/transactions", response_class=Response, responses=LIST_RESPONSE)
    async def list_transactions(
        who: User,
        account_id: Annotated[str | None, Query()] = None,
        limit: Annotated[str | None, Query()] = None,
        since: Annotated[str | None, Query()] = None,
        before: Annotated[str | None, Query()] = None,
        expand: Expand = [],  # noqa: B006 (FastAPI copies defaults)
    ) -> Response:
        """An account's transactions, oldest first: `limit` (default 30, at most 100), `since` (an RFC 3339
        time, or a transaction id to page on from), `before` (an RFC 3339 time), `expand[]=merchant`."""
        if not account_id:
            raise bad_request("missing_param", "account_id is required", param="account_id")
        page_size = schemas.parse_limit(limit, default=settings.default_limit, maximum=settings.max_limit)
        since_at = schemas.parse_since(since)
        before_at = schemas.parse_time(before, "before") if before is not None else None
        expanded = schemas.parse_expand(expand)
        async with db.read() as session:
            page = await repo.page_json(
                session, account_id, who.user_id, limit=page_size,
                since_id=since_at.transaction_id if since_at else None,
                since=since_at.time if since_at else None, before=before_at, expand=expanded,
            )  # fmt: skip
        if page is None:
            raise not_found("account", "no account with that id")
        if page.user_id != who.user_id:
            raise forbidden("insufficient_permissions", "that account does not belong to you")
        if not page.anchor_found or page.body is None:
            raise bad_request("bad_param.since", "since names no transaction of this account", param="since")
        return Response(page.body, media_type=JSON)

    @api.get("/transactions/{transaction_id}", response_class=Response, responses=ONE_RESPONSE)
    async def get_transaction(who: User, transaction_id: str, expand: Expand = []) -> Response:  # noqa: B006
        """One of your transactions; `expand[]=merchant` gives the merchant object instead of its id."""
        expanded = schemas.parse_expand(expand)
        async with db.read() as session:
            found = await repo.one_json(session, transaction_id, expand=expanded)
        if found is None or found[0] != who.user_id:
            raise _no_such_transaction()
        return Response(found[1], media_type=JSON)

    @api.patch(
        "/transactions/{transaction_id}",
        response_class=Response,
        responses=ONE_RESPONSE,
        openapi_extra={
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": METADATA_FORM}}}
        },
    )
    async def annotate(
        who: User,
        transaction_id: str,
        request: Request,
        expand: Expand = [],  # noqa: B006
    ) -> Response:
        """Set `metadata[key]=value` (an empty value deletes the key; `metadata[notes]` sets the notes)."""
        expanded = schemas.parse_expand(expand)
        form = await request.form()
        changes = schemas.parse_metadata_form(
            (name, value) for name, value in form.multi_items() if isinstance(value, str)
        )
        async with db.transaction() as session:
            await annotations.annotate(session, who.user_id, transaction_id, changes)
            found = await repo.one_json(session, transaction_id, expand=expanded)
        assert found is not None
        return Response(found[1], media_type=JSON)

    return api


RECEIPT_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"receipt_id", "items_total", "total_matches_items"}', "content": {JSON: {}}}
}


def attachments_router(db: Database, annotations: Annotations) -> APIRouter:
    """Attachments and receipts (Monzo's developer API; decision 0037), for the transaction's owner only."""
    api = APIRouter(tags=["attachments and receipts"])

    @api.post("/attachment/upload")
    async def upload(
        who: User,
        file_name: Annotated[str, Form()],
        file_type: Annotated[str, Form()],
        content_length: Annotated[str, Form()],
    ) -> dict[str, str]:
        """Where to PUT a file (`upload_url`, signed, expiring; send the file's Content-Type) and what to
        register it as (`file_url`). Images and PDFs, at most 10 MB."""
        name = schemas.parse_file_name(file_name)
        kind = check_type(file_type)
        length = schemas.parse_content_length(content_length, MAX_BYTES)
        async with db.transaction() as session:
            return await annotations.start_upload(session, who.user_id, name, kind, length)

    @api.post("/attachment/register")
    async def register(
        who: User,
        external_id: Annotated[str, Form()],
        file_url: Annotated[str, Form()],
        file_type: Annotated[str, Form()],
    ) -> dict[str, Any]:
        """Attach an uploaded file to one of your transactions (`external_id`: the transaction's id)."""
        kind = check_type(file_type)
        async with db.transaction() as session:
            attachment = await annotations.register(session, who.user_id, external_id, file_url, kind)
            return {"attachment": attachment_json(attachment)}

    @api.post("/attachment/deregister")
    async def deregister(who: User, id: Annotated[str, Form()]) -> dict[str, Any]:
        """Remove an attachment from its transaction."""
        async with db.transaction() as session:
            await annotations.deregister(session, who.user_id, id)
        return {}

    @api.get("/attachment/files/{key:path}", status_code=302, response_class=RedirectResponse)
    async def read_file(who: User, key: str) -> RedirectResponse:
        """A file you uploaded: a redirect to a signed download URL that expires."""
        async with db.read() as session:
            url = await annotations.download_url(session, who.user_id, key)
        return RedirectResponse(url, status_code=302)

    store = annotations.store
    if isinstance(store, LocalStore):

        @api.put("/attachment/blobs/{key:path}")
        async def put_blob(
            key: str, request: Request, expires: str | None = None, signature: str | None = None
        ) -> dict[str, Any]:
            """The embedded store's signed upload URL: the file's bytes, with its Content-Type."""
            store.check("PUT", key, expires, signature)
            data = await read_body(request, MAX_BYTES)
            async with db.transaction() as session:
                await annotations.receive_upload(session, key, request.headers.get("content-type", ""), data)
            return {}

        @api.get("/attachment/blobs/{key:path}", response_class=Response)
        async def get_blob(key: str, expires: str | None = None, signature: str | None = None) -> Response:
            """The embedded store's signed download URL."""
            store.check("GET", key, expires, signature)
            async with db.read() as session:
                kind = await annotations.file_type(session, key)
            data = await store.get(key)
            if data is None:
                raise not_found("file", "no such file")
            return Response(data, media_type=kind, headers={"Cache-Control": "private, max-age=60"})

    @api.put("/transaction-receipts", responses=RECEIPT_ANSWER, openapi_extra=json_body_doc("ReceiptIn"))
    async def put_receipt(who: User, request: Request) -> JSONResponse:
        """Add an itemised receipt to one of your transactions; the same `external_id` again replaces it.
        Items that do not add up to the total are accepted and flagged (`total_matches_items`: false)."""
        body = await read_model(request, schemas.ReceiptIn, max_bytes=256 * 1024)
        async with db.transaction() as session:
            answer = await annotations.put_receipt(session, who.user_id, body)
        return JSONResponse(answer.to_json())

    @api.get("/transaction-receipts")
    async def get_receipt(who: User, external_id: Annotated[str, Query(max_length=255)]) -> dict[str, Any]:
        async with db.read() as session:
            return {
                "receipt": receipt_json(await annotations.owned_receipt(session, who.user_id, external_id))
            }

    @api.delete("/transaction-receipts")
    async def delete_receipt(who: User, external_id: Annotated[str, Query(max_length=255)]) -> dict[str, Any]:
        async with db.transaction() as session:
            await annotations.delete_receipt(session, who.user_id, external_id)
        return {}

    return api
