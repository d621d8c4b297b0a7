"""The Mondo transactions API: list, read and annotate your transactions (owner only).

Reads answer with the JSON PostgreSQL builds from each transaction's stored body (one statement, no
per-row Python); the merchant, when expanded, is joined in the same statement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from services.transactions import repository as repo
from services.transactions import schemas
from services.transactions.config import TransactionsSettings
from services.transactions.feed import FeedItem
from services.transactions.publish import Announcer
from services.transactions.render import transaction_json
from shared.auth import Identity, require_identity
from shared.db import Database
from shared.errors import bad_request, forbidden, not_found

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


def public_router(db: Database, announcer: Announcer, settings: TransactionsSettings) -> APIRouter:
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
            tx = await repo.row_by_id(session, transaction_id)
            if tx is None or tx.user_id != who.user_id:
                raise _no_such_transaction()
            notes, metadata = tx.notes, dict(tx.metadata)
            for key, value in changes.items():
                if key == "notes":
                    notes = value
                elif value == "":
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            if (notes, metadata) != (tx.notes, tx.metadata):
                tx.notes, tx.metadata = notes, metadata
                tx.annotated = datetime.now(UTC)
                tx.version += 1
                item = FeedItem.from_json(tx.item)
                body = transaction_json(tx, item)
                saved = await repo.save(session, tx, body, currency=item.currency)
                await announcer.announce(
                    session, tx, kind=item.kind, currency=item.currency, body=body, saved=saved,
                    change="annotated", first=False,
                )  # fmt: skip
            found = await repo.one_json(session, transaction_id, expand=expanded)
        assert found is not None
        return Response(found[1], media_type=JSON)

    return api
