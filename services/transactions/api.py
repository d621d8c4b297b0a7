"""The Mondo transactions API: list, read and annotate your transactions (owner only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions import repository as repo
from services.transactions import schemas
from services.transactions.config import TransactionsSettings
from services.transactions.models import Transaction
from services.transactions.publish import Announcer
from services.transactions.render import transaction_json
from shared.auth import Identity, require_identity
from shared.db import Database
from shared.errors import bad_request, forbidden, not_found

User = Annotated[Identity, Depends(require_identity)]
Expand = Annotated[list[str], Query(alias="expand[]")]

METADATA_FORM: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "description": "metadata[key]=value pairs; an empty value deletes the key; metadata[notes] sets notes",
}


def _no_such_transaction() -> Exception:
    return not_found("transaction", "no transaction with that id")


async def _render(session: AsyncSession, rows: list[Transaction], expand: bool) -> list[dict[str, Any]]:
    wanted = {t.merchant_id for t in rows if t.merchant_id is not None}
    found = await repo.merchants(session, wanted)
    return [
        transaction_json(t, found.get(t.merchant_id) if t.merchant_id else None, expand_merchant=expand)
        for t in rows
    ]


def public_router(db: Database, announcer: Announcer, settings: TransactionsSettings) -> APIRouter:
    api = APIRouter(tags=["transactions"])

    @api.get("/transactions")
    async def list_transactions(
        who: User,
        account_id: Annotated[str | None, Query()] = None,
        limit: Annotated[str | None, Query()] = None,
        since: Annotated[str | None, Query()] = None,
        before: Annotated[str | None, Query()] = None,
        expand: Expand = [],  # noqa: B006 (FastAPI copies defaults)
    ) -> dict[str, Any]:
        """An account's transactions, oldest first: `limit` (default 30, at most 100), `since` (an RFC 3339
        time, or a transaction id to page on from), `before` (an RFC 3339 time), `expand[]=merchant`."""
        if not account_id:
            raise bad_request("missing_param", "account_id is required", param="account_id")
        page_size = schemas.parse_limit(limit, default=settings.default_limit, maximum=settings.max_limit)
        since_at = schemas.parse_since(since)
        before_at = schemas.parse_time(before, "before") if before is not None else None
        expanded = schemas.parse_expand(expand)
        async with db.read() as session:
            owner = await repo.owner(session, account_id)
            if owner is None:
                raise not_found("account", "no account with that id")
            if owner.user_id != who.user_id:
                raise forbidden("insufficient_permissions", "that account does not belong to you")
            cursor = None
            if since_at is not None and since_at.transaction_id is not None:
                anchor = await repo.transaction_by_id(session, since_at.transaction_id)
                if anchor is None or anchor.account_id != account_id:
                    raise bad_request(
                        "bad_param.since", "since names no transaction of this account", param="since"
                    )
                cursor = (anchor.created, anchor.id)
            elif since_at is not None and since_at.time is not None:
                cursor = (since_at.time, "")  # every id sorts after "": created >= since
            rows = await repo.page(session, account_id, limit=page_size, since=cursor, before=before_at)
            return {"transactions": await _render(session, rows, expanded)}

    @api.get("/transactions/{transaction_id}")
    async def get_transaction(who: User, transaction_id: str, expand: Expand = []) -> dict[str, Any]:  # noqa: B006
        """One of your transactions; `expand[]=merchant` gives the merchant object instead of its id."""
        expanded = schemas.parse_expand(expand)
        async with db.read() as session:
            tx = await repo.transaction_by_id(session, transaction_id)
            if tx is None or tx.user_id != who.user_id:
                raise _no_such_transaction()
            [body] = await _render(session, [tx], expanded)
            return {"transaction": body}

    @api.patch(
        "/transactions/{transaction_id}",
        openapi_extra={
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": METADATA_FORM}}}
        },
    )
    async def annotate(
        who: User,
        transaction_id: str,
        request: Request,
        expand: Expand = [],  # noqa: B006
    ) -> dict[str, Any]:
        """Set `metadata[key]=value` (an empty value deletes the key; `metadata[notes]` sets the notes)."""
        expanded = schemas.parse_expand(expand)
        form = await request.form()
        changes = schemas.parse_metadata_form(
            (name, value) for name, value in form.multi_items() if isinstance(value, str)
        )
        async with db.transaction() as session:
            tx = await repo.transaction_by_id(session, transaction_id, lock=True)
            if tx is None or tx.user_id != who.user_id:
                raise _no_such_transaction()
            notes, metadata = tx.notes, dict(tx.metadata_)
            for key, value in changes.items():
                if key == "notes":
                    notes = value
                elif value == "":
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            if (notes, metadata) != (tx.notes, tx.metadata_):
                tx.notes, tx.metadata_ = notes, metadata
                tx.annotated = datetime.now(UTC)
                tx.version += 1
                await announcer.announce(session, tx, "annotated")
            [body] = await _render(session, [tx], expanded)
            return {"transaction": body}

    return api
