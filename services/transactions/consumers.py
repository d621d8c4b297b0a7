"""The feed's event handlers: record each event, re-fold its transaction, keep balances and spend
today, announce changes on `transactions.feed`.

Every handler runs inside the consumer's transaction, next to the event's inbox row, and never commits.
Redelivered events are no-ops twice over: the inbox skips them, and `source_events` / `ledger_points`
are keyed by event id.

Round trips are the cost that matters (docs/decisions/0010-transaction-feed.md, "Performance"): a card
event is one statement to record it and read everything its fold needs, one to write the transaction
(with its merchant and spend moves), and the announcement's outbox row; a change that shows nothing
new writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date
from functools import lru_cache

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
    NetworkMerchant,
)
from services.transactions.feed import (
    Fact,
    FeedItem,
    Movement,
    balance_after,
    change_of,
    event_refs,
    fold,
    source_key,
    spend_day,
    spend_moves,
    spend_of,
)
from services.transactions.merchants import MerchantProfile, profile, stable_id
from services.transactions.models import TransactionRow
from services.transactions.publish import Announcer
from services.transactions.render import TOPUP_CATEGORY, merchant_doc, transaction_json
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

    def __post_init__(self) -> None:
        # A merchant's directory entry is a pure function of its network record: worked out once per
        # process (name cleaning, MCC lookup, ids), never per event.
        self._directory_entry = lru_cache(maxsize=4096)(self._directory_entry_uncached)

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
        for tx in await repo.add_owner(session, data.account_id, data.user_id, data.currency):
            tx.user_id = data.user_id
            await self._write(session, tx, FeedItem.from_json(tx.item), "created")

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
        e, time = envelope, envelope.time.astimezone(UTC)
        loaded = await repo.load_for_fold(
            session, key=key, event_id=e.id, event_type=e.type, time=time, data=e.data,
            account_id=str(e.data["account_id"]), refs=event_refs(e.type, e.data),
        )  # fmt: skip
        if loaded is None:
            return  # already recorded
        item = fold([*loaded.facts, Fact(e.id, e.type, time, e.data)])
        if item is None:
            return
        merchant_id, category, sighting = self._merchant(item)
        balance, matched = balance_after(item.balance_refs, item.created, loaded.movements)
        tx, new_json = loaded.row, item.to_json()
        if tx is None:
            tx = TransactionRow(
                id=transaction_id(key), source_key=key, account_id=item.account_id, user_id=None,
                created=item.created, updated=item.updated, kind=item.kind, item=new_json,
                merchant_id=merchant_id, category=category, balance_refs=list(item.balance_refs),
                account_balance=balance, balance_matched=matched, spend_day=spend_day(item.created),
                spend_amount=0, notes="", metadata={}, annotated=None, version=1, announced=False,
            )  # fmt: skip
            old = None
            moves = spend_moves(None, (tx.spend_day, spend_of(item)))
        elif tx.item == new_json and tx.account_balance == balance and tx.merchant_id == merchant_id:
            if tx.balance_matched != matched:  # nothing the feed shows has changed: no new version
                tx.balance_matched = matched
                await self._write(session, tx, item, "created", announce=False)
            return
        else:
            old = FeedItem.from_json(tx.item)
            moves = spend_moves((tx.spend_day, tx.spend_amount), (spend_day(item.created), spend_of(item)))
            tx.version += 1
            tx.item, tx.created, tx.updated, tx.kind = new_json, item.created, item.updated, item.kind
            tx.merchant_id, tx.category, tx.balance_refs = merchant_id, category, list(item.balance_refs)
            tx.account_balance, tx.balance_matched = balance, matched
        tx.spend_day, tx.spend_amount = spend_day(item.created), spend_of(item)
        if tx.user_id is None:
            tx.user_id = loaded.owner
        await self._write(session, tx, item, change_of(old, item), merchant=sighting, moves=moves)

    def _merchant(self, item: FeedItem) -> tuple[str | None, str, repo.MerchantSighting | None]:
        if item.kind == "topup" or item.merchant is None:
            return None, TOPUP_CATEGORY if item.kind == "topup" else "general", None
        p, doc = self._directory_entry(item.merchant)
        m = item.merchant
        return p.id, p.category, repo.MerchantSighting(p, m.id, m.name, doc, item.created, item.updated)

    def _directory_entry_uncached(self, m: NetworkMerchant) -> tuple[MerchantProfile, dict[str, object]]:
        p = profile(m.id, m.name, m.mcc, m.city, m.country, m.postcode, self.logo_base_url)
        return p, merchant_doc(p)

    async def _write(
        self,
        session: AsyncSession,
        tx: TransactionRow,
        item: FeedItem,
        change: Change,
        *,
        merchant: repo.MerchantSighting | None = None,
        moves: dict[date, int] | None = None,
        announce: bool = True,
    ) -> None:
        """Save the transaction as it now stands and announce it: `transaction.created` the first time its
        owner is known, `transaction.updated` after."""
        first = announce and not tx.announced and tx.user_id is not None
        tx.announced = tx.announced or first
        body = transaction_json(tx, item)
        saved = await repo.save(
            session, tx, body, currency=item.currency, merchant=merchant, spend_moves=moves
        )
        if announce and tx.announced:
            await self.announcer.announce(
                session, tx, kind=item.kind, currency=item.currency, body=body, saved=saved, change=change,
                first=first,
            )  # fmt: skip

    # -- balances -------------------------------------------------------------------------------------------

    async def _ledger_point(self, session: AsyncSession, envelope: Envelope) -> None:
        data = LedgerMovement.model_validate(envelope.data)
        ref = data.topup_id or data.network_txn_id
        if ref is None:
            return
        e, time = envelope, envelope.time.astimezone(UTC)
        point = Movement(time, e.id, ref, data.available)
        for touched in await repo.add_ledger_point(session, e.id, data.account_id, ref, time, data.available):
            tx = touched.row
            balance, matched = balance_after(tx.balance_refs, tx.created, [*touched.movements, point])
            item = FeedItem.from_json(tx.item)
            if balance == tx.account_balance:
                if matched != tx.balance_matched:  # nothing the feed shows has changed
                    tx.balance_matched = matched
                    await self._write(session, tx, item, "created", announce=False)
                continue
            tx.account_balance, tx.balance_matched = balance, matched
            tx.version += 1
            if tx.user_id is None:
                tx.user_id = touched.owner
            await self._write(session, tx, item, change_of(item, item))
