"""Announcing a transaction on `transactions.feed`: its full Mondo JSON (merchant expanded) and the
account's spend on the transaction's local day, in the caller's transaction (the outbox).

Reads nothing: the caller passes what `repository.save` just wrote and read back.
"""

from __future__ import annotations

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
from services.transactions.repository import Saved
from shared.events.outbox import Outbox


def expanded(body: dict[str, Any], merchant: dict[str, Any] | None) -> dict[str, Any]:
    """A stored transaction body with its merchant expanded (as GET ?expand[]=merchant answers)."""
    return body if merchant is None else {**body, "merchant": merchant}


@dataclass
class Announcer:
    outbox: Outbox

    async def announce(
        self,
        session: AsyncSession,
        tx: TransactionRow,
        *,
        kind: Kind,
        currency: str,
        body: dict[str, Any],
        saved: Saved,
        change: Change,
        first: bool,
    ) -> None:
        """transaction.created the first time (`first`), transaction.updated after. The owner must be
        known (`tx.user_id`)."""
        assert tx.user_id is not None
        cls = TransactionCreated if first else TransactionUpdated
        event = cls(
            account_id=tx.account_id,
            user_id=tx.user_id,
            kind=kind,
            change="created" if first else change,
            tx_version=tx.version,
            spend_today=SpendToday(amount=max(0, saved.spend_today), currency=currency),
            transaction=expanded(body, saved.merchant),
        )
        await self.outbox.emit(session, FEED_TOPIC, tx.account_id, event)
