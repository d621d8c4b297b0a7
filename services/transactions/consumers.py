"""The feed's event handlers: record each event, re-fold its transaction, keep balances and spend
today, announce changes on `transactions.feed`.

Every handler runs inside the consumer's transaction, next to the event's inbox row, and never commits.
Redelivered events are no-ops twice over: the inbox skips them, and `source_events` / `ledger_points`
are keyed by event id.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions import repository as repo
from services.transactions.events import (
    ACCOUNT_CREATED,
    ACCOUNT_POSTED,
    ACCOUNTS_TOPIC,
    CARD_TYPES,
    CARDS_TOPIC,
    HOLD_PLACED,
    LEDGER_TOPIC,
    TOPUP_COMPLETED,
    AccountCreated,
    Change,
    LedgerMovement,
)
from services.transactions.feed import FeedItem, change_of, fold, source_key, spend_day, spend_of
from services.transactions.merchants import profile, stable_id
from services.transactions.models import Transaction
from services.transactions.publish import Announcer
from services.transactions.render import TOPUP_CATEGORY
from shared.events.consumer import Handler
from shared.events.envelope import Envelope

TOPICS = (ACCOUNTS_TOPIC, LEDGER_TOPIC, CARDS_TOPIC)


def transaction_id(key: str) -> str:
    """The transaction's id follows from what it is (its authorisation, presentment or top-up), so the
    same events give the same `tx_` id in any order, in any replica."""
    return stable_id("tx", key)


@dataclass
class FeedProjector:
    announcer: Announcer
    logo_base_url: str

    def handlers(self) -> dict[str, Handler]:
        handlers: dict[str, Handler] = {t: self.on_card_event for t in CARD_TYPES}
        handlers[ACCOUNT_CREATED] = self.on_account_created
        handlers[TOPUP_COMPLETED] = self.on_topup
        handlers[HOLD_PLACED] = self.on_ledger_movement
        handlers[ACCOUNT_POSTED] = self.on_ledger_movement
        return handlers

    # -- handlers ---------------------------------------------------------------------------------------

    async def on_account_created(self, session: AsyncSession, envelope: Envelope) -> None:
        data = AccountCreated.model_validate(envelope.data)
        await repo.add_owner(session, data.account_id, data.user_id, data.currency)
        for tx in await repo.unannounced(session, data.account_id):
            tx.user_id = data.user_id
            await self.announcer.announce(session, tx, "created")

    async def on_card_event(self, session: AsyncSession, envelope: Envelope) -> None:
        key = source_key(envelope.type, envelope.data)
        if key is not None:
            await self._apply(session, envelope, key)

    async def on_topup(self, session: AsyncSession, envelope: Envelope) -> None:
        await self._ledger_point(session, envelope)
        key = source_key(envelope.type, envelope.data)
        if key is not None:
            await self._apply(session, envelope, key)

    async def on_ledger_movement(self, session: AsyncSession, envelope: Envelope) -> None:
        await self._ledger_point(session, envelope)

    # -- the fold -----------------------------------------------------------------------------------------

    async def _apply(self, session: AsyncSession, envelope: Envelope, key: str) -> None:
        e = envelope
        if not await repo.add_source_event(session, e.id, key, e.type, e.time, e.data):
            return
        item = fold(await repo.facts_of(session, key))
        if item is None:
            return
        merchant_id, category = await self._merchant(session, item)
        tx = await repo.transaction_by_key(session, key)
        old = FeedItem.from_json(tx.item) if tx is not None else None
        balance, matched = await repo.balance_after(session, item.account_id, item.balance_refs, item.created)
        if tx is None:
            tx = Transaction(
                id=transaction_id(key), source_key=key, account_id=item.account_id, kind=item.kind,
                spend_day=spend_day(item.created), spend_amount=0, notes="", metadata_={}, version=1,
                announced=False,
            )  # fmt: skip
            session.add(tx)
        elif old == item and tx.account_balance == balance and tx.merchant_id == merchant_id:
            tx.balance_matched = matched
            return
        else:
            tx.version += 1
        tx.item, tx.created, tx.updated, tx.kind = item.to_json(), item.created, item.updated, item.kind
        tx.merchant_id, tx.category, tx.balance_refs = merchant_id, category, list(item.balance_refs)
        tx.account_balance, tx.balance_matched = balance, matched
        await self._move_spend(session, tx, item)
        await session.flush()  # visible to the next event's queries in this batch (no autoflush)
        await self._announce(session, tx, change_of(old, item))

    async def _merchant(self, session: AsyncSession, item: FeedItem) -> tuple[str | None, str]:
        if item.kind == "topup" or item.merchant is None:
            return None, TOPUP_CATEGORY if item.kind == "topup" else "general"
        m = item.merchant
        p = profile(m.id, m.name, m.mcc, m.city, m.country, m.postcode, self.logo_base_url)
        await repo.upsert_merchant(session, p, m.id, m.name, item.created, item.updated)
        return p.id, p.category

    async def _move_spend(self, session: AsyncSession, tx: Transaction, item: FeedItem) -> None:
        """Keep the account's running spend per day equal to the sum of its transactions' shares."""
        day, amount = spend_day(item.created), spend_of(item)
        if (tx.spend_day, tx.spend_amount) == (day, amount):
            return
        if tx.spend_amount:
            await repo.add_spend(session, tx.account_id, tx.spend_day, item.currency, -tx.spend_amount)
        if amount:
            await repo.add_spend(session, tx.account_id, day, item.currency, amount)
        tx.spend_day, tx.spend_amount = day, amount

    async def _announce(self, session: AsyncSession, tx: Transaction, change: Change) -> None:
        if tx.announced:
            await self.announcer.announce(session, tx, change)
            return
        owner = await repo.owner(session, tx.account_id)
        if owner is not None:
            tx.user_id = owner.user_id
            await self.announcer.announce(session, tx, "created")

    # -- balances -------------------------------------------------------------------------------------------

    async def _ledger_point(self, session: AsyncSession, envelope: Envelope) -> None:
        data = LedgerMovement.model_validate(envelope.data)
        ref = data.topup_id or data.network_txn_id
        if ref is None:
            return
        e = envelope
        if not await repo.add_ledger_point(session, e.id, data.account_id, ref, e.time, data.available):
            return
        for tx in await repo.touched_by_point(session, data.account_id, ref, envelope.time):
            balance, matched = await repo.balance_after(session, tx.account_id, tx.balance_refs, tx.created)
            tx.balance_matched = matched
            if balance == tx.account_balance:
                continue  # nothing the feed shows has changed
            tx.account_balance = balance
            tx.version += 1
            item = FeedItem.from_json(tx.item)
            await self._announce(session, tx, change_of(item, item))
