"""Announcing a transaction on `transactions.feed`: its full Mondo JSON (merchant expanded) and the
account's spend on the transaction's local day, in the caller's transaction (the outbox)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions import repository as repo
from services.transactions.events import (
    FEED_TOPIC,
    Change,
    SpendToday,
    TransactionCreated,
    TransactionUpdated,
)
from services.transactions.feed import FeedItem
from services.transactions.models import Merchant, Transaction
from services.transactions.render import transaction_json
from shared.events.outbox import Outbox


@dataclass
class Announcer:
    outbox: Outbox

    async def announce(self, session: AsyncSession, tx: Transaction, change: Change) -> None:
        """transaction.created the first time (the owner must be known), transaction.updated after."""
        if tx.user_id is None:
            return
        merchant = None
        if tx.merchant_id is not None:
            # populate_existing: an upsert in this transaction may have widened the row's created/updated.
            query = select(Merchant).where(Merchant.id == tx.merchant_id)
            merchant = await session.scalar(query.execution_options(populate_existing=True))
        item = FeedItem.from_json(tx.item)
        spend = await repo.spend_on(session, tx.account_id, tx.spend_day)
        cls = TransactionUpdated if tx.announced else TransactionCreated
        event = cls(
            account_id=tx.account_id,
            user_id=tx.user_id,
            kind=item.kind,
            change=change if tx.announced else "created",
            tx_version=tx.version,
            spend_today=SpendToday(amount=spend, currency=item.currency),
            transaction=transaction_json(tx, merchant, expand_merchant=True),
        )
        tx.announced = True
        await self.outbox.emit(session, FEED_TOPIC, tx.account_id, event)
