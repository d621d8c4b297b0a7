"""Announcing a transaction on `transactions.feed`: its full Mondo JSON (merchant expanded) and the
account's spend on the transaction's local day, in the caller's transaction (the outbox).

Reads nothing: the caller passes what `repository.save_batch` just wrote and read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions.events import (
    FEED_TOPIC,
    Change,
    Kind,
    SpendToday,
    TransactionCreated,
    TransactionUpdated,
)
from services.transactions.models import TransactionRow
from shared.events.envelope import Envelope
from shared.events.outbox import Outbox, Outgoing


def expanded(body: dict[str, Any], merchant: dict[str, Any] | None) -> dict[str, Any]:
    """A stored transaction body with its merchant expanded (as GET ?expand[]=merchant answers)."""
    return body if merchant is None else {**body, "merchant": merchant}


@dataclass
class Announcer:
    outbox: Outbox

    async def announce_many(
        self,
        session: AsyncSession,
        events: Sequence[tuple[TransactionCreated | TransactionUpdated, Envelope | None]],
    ) -> None:
        """Announcements (each with the event that caused it, if one did), in one statement, in order."""
        await self.outbox.emit_many(
            session, [Outgoing(FEED_TOPIC, e.account_id, e, cause) for e, cause in events]
        )


def feed_event(
    tx: TransactionRow,
    *,
    kind: Kind,
    currency: str,
    body: dict[str, Any],
    spend_today: int,
    merchant: dict[str, Any] | None,
    change: Change,
    first: bool,
) -> TransactionCreated | TransactionUpdated:
    """transaction.created the first time (`first`), transaction.updated after; `spend_today` is the
    day's running figure after this write (shown floored at 0). The owner must be known."""
    assert tx.user_id is not None
    cls = TransactionCreated if first else TransactionUpdated
    return cls(
        account_id=tx.account_id,
        user_id=tx.user_id,
        kind=kind,
        change="created" if first else change,
        tx_version=tx.version,
        spend_today=SpendToday(amount=max(0, spend_today), currency=currency),
        transaction=expanded(body, merchant),
    )
