"""Idempotency keys for writes the outside world can repeat (the `Idempotency-Key` header).

The key row is inserted first, in the request's own transaction. A concurrent
request with the same key blocks on that insert until the first commits, then
replays its stored response; if the first fails, its key row rolls back with
it and the retry runs for real. Same key with a different request: 422.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts.models import IdempotencyKey
from shared.errors import BankError, bad_request

MAX_KEY_LENGTH = 255


def request_fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    canonical = json.dumps([method, path, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def require_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise bad_request("missing_idempotency_key", "this request needs an Idempotency-Key header")
    if len(key) > MAX_KEY_LENGTH:
        raise bad_request("bad_idempotency_key", f"Idempotency-Key is at most {MAX_KEY_LENGTH} characters")
    return key.strip()


async def run_once(
    session: AsyncSession,
    *,
    owner: str,
    key: str,
    fingerprint: str,
    action: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> tuple[int, dict[str, Any]]:
    claimed = await session.scalar(
        insert(IdempotencyKey)
        .values(owner=owner, key=key, request_hash=fingerprint, status_code=0, response={})
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    if claimed is None:
        stored = (
            await session.execute(
                select(
                    IdempotencyKey.request_hash, IdempotencyKey.status_code, IdempotencyKey.response
                ).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
            )
        ).one()
        if stored.request_hash != fingerprint:
            raise BankError(
                "unprocessable.idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            )
        return stored.status_code, stored.response
    status, body = await action()
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        .values(status_code=status, response=body)
    )
    return status, body
