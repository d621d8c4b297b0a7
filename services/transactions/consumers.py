"""The feed's event handlers: record each event, re-fold its transaction, keep balances and spend
today, announce changes on `transactions.feed`.

Every handler runs inside the consumer's transaction, next to the event's inbox row, and never commits.
Redelivered events are no-ops twice over: the inbox skips them, and `source_events` / `ledger_points`
are keyed by event id.

Round trips are the cost that matters (docs/decisions/0010-transaction-feed.md, "Performance"): a batch
of events, of any size, is one statement to record them and read everything their folds need, one to
write the transactions they change (with merchants and spend moves), and one for the announcements'
outbox rows; a change that shows nothing new writes nothing. One event is a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

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
    TRANSFER_TYPES,
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
from services.transactions.publish import Announcer, feed_event
from services.transactions.render import CATEGORIES, merchant_doc, transaction_json
from shared.events.consumer import Handler
from shared.events.envelope import Envelope

TOPICS = (ACCOUNTS_TOPIC, LEDGER_TOPIC, CARDS_TOPIC)
# Ledger events that are a transaction of their own as well as a balance figure.
LEDGER_TRANSACTIONS = (TOPUP_COMPLETED, *TRANSFER_TYPES)


@dataclass(frozen=True, slots=True)
class _Announcement:
    item: FeedItem
    body: dict[str, Any]
    change: Change
    first: bool


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
        """One event is a batch of one (the consumer's careful path: a savepoint and retries per event)."""
        return {t: self.on_event for t in (*CARD_TYPES, ACCOUNT_CREATED, *LEDGER_TRANSACTIONS,
                                           HOLD_PLACED, ACCOUNT_POSTED)}  # fmt: skip

    async def on_event(self, session: AsyncSession, envelope: Envelope) -> None:
        await self.on_batch(session, [envelope])

    def _merchant(self, item: FeedItem) -> tuple[str | None, str, repo.MerchantSighting | None]:
        if item.merchant is None:
            return None, CATEGORIES.get(item.kind, "general"), None
        p, doc = self._directory_entry(item.merchant)
        m = item.merchant
        return p.id, p.category, repo.MerchantSighting(p, m.id, m.name, doc, item.created, item.updated)

    def _directory_entry_uncached(self, m: NetworkMerchant) -> tuple[MerchantProfile, dict[str, object]]:
        p = profile(m.id, m.name, m.mcc, m.city, m.country, m.postcode, self.logo_base_url)
        return p, merchant_doc(p)

    async def on_batch(self, session: AsyncSession, envelopes: list[Envelope]) -> None:
        """A batch of events in a constant number of statements. One records every event, movement
        and owner and reads (locked, in id order) every transaction they may change; each is folded
        once from all its events, old and new; one writes the changed transactions, merchants and
        spend moves; one emits the announcements (at most one per transaction: its fold over the
        batch). Raising makes the consumer redo the batch event by event (`on_event`)."""
        events: list[repo.BatchEvent] = []
        batch_facts: dict[str, list[Fact]] = {}
        keys: dict[str, repo.BatchKey] = {}
        points: list[tuple[str, str, str, datetime, int]] = []
        batch_points: dict[str, list[Movement]] = {}
        owners: dict[str, tuple[str, str, str]] = {}
        # Where each transaction (by key) or account first appears in the batch, and its latest event.
        key_seen: dict[str, tuple[int, Envelope]] = {}
        account_seen: dict[str, tuple[int, Envelope]] = {}
        for i, e in enumerate(envelopes):
            time = e.time.astimezone(UTC)
            if e.type == ACCOUNT_CREATED:
                acc = AccountCreated.model_validate(e.data)
                owners.setdefault(acc.account_id, (acc.account_id, acc.user_id, acc.currency))
                account_seen[acc.account_id] = (account_seen.get(acc.account_id, (i, e))[0], e)
                continue
            if e.type in (*LEDGER_TRANSACTIONS, HOLD_PLACED, ACCOUNT_POSTED):
                data = LedgerMovement.model_validate(e.data)
                ref = data.ref
                if ref is not None:
                    points.append((e.id, data.account_id, ref, time, data.available))
                    point = Movement(time, e.id, ref, data.available)
                    batch_points.setdefault(data.account_id, []).append(point)
                    account_seen[data.account_id] = (account_seen.get(data.account_id, (i, e))[0], e)
                if e.type not in LEDGER_TRANSACTIONS:
                    continue
            key = source_key(e.type, e.data)
            if key is None:
                continue
            events.append(repo.BatchEvent(e.id, key, e.type, time, e.data))
            batch_facts.setdefault(key, []).append(Fact(e.id, e.type, time, e.data))
            refs = list(event_refs(e.type, e.data))
            if (k := keys.get(key)) is None:
                keys[key] = repo.BatchKey(key, str(e.data["account_id"]), refs, time)
            else:
                keys[key] = replace(k, refs=[*k.refs, *refs], min_time=min(k.min_time, time))
            key_seen[key] = (key_seen.get(key, (i, e))[0], e)
        if not keys and not points and not owners:
            return
        targets = await repo.load_batch(
            session, events=events, points=points, owners=list(owners.values()), keys=list(keys.values())
        )

        writes: list[tuple[TransactionRow, dict[str, Any]]] = []
        sightings: dict[str, repo.MerchantSighting] = {}
        moved: dict[tuple[str, date], tuple[str, int]] = {}
        # (position in the batch, row, its spend moves, what to announce or None, its cause)
        changed: list[tuple[int, TransactionRow, dict[date, int], _Announcement | None, Envelope | None]] = []
        for target in targets:
            row = target.row
            if target.in_batch:
                folded = fold([*target.facts, *batch_facts[target.key]])
                if folded is None:
                    continue
                item, new_json = folded, folded.to_json()
            elif row is not None:
                item, new_json = FeedItem.from_json(row.item), row.item
            else:
                continue
            account = item.account_id
            merchant_id, category, sighting = self._merchant(item)
            balance, matched = balance_after(
                item.balance_refs, item.created, [*target.movements, *batch_points.get(account, ())]
            )
            owner = target.owner or (owners[account][1] if account in owners else None)
            old: FeedItem | None = None
            moves: dict[date, int] = {}
            if row is None:
                row = TransactionRow(
                    id=transaction_id(target.key), source_key=target.key, account_id=account, user_id=None,
                    created=item.created, updated=item.updated, kind=item.kind, item=new_json,
                    merchant_id=merchant_id, category=category, balance_refs=list(item.balance_refs),
                    account_balance=balance, balance_matched=matched, spend_day=spend_day(item.created),
                    spend_amount=0, notes="", metadata={}, annotated=None, version=1, announced=False,
                )  # fmt: skip
                visible = True
                moves = spend_moves(None, (row.spend_day, spend_of(item)))
            else:
                visible = not (
                    row.item == new_json and row.account_balance == balance and row.merchant_id == merchant_id
                )
                if visible:
                    old = FeedItem.from_json(row.item)
                    moves = spend_moves(
                        (row.spend_day, row.spend_amount), (spend_day(item.created), spend_of(item))
                    )
                    row.version += 1
                    row.item, row.created, row.updated = new_json, item.created, item.updated
                    row.kind = item.kind
                    row.merchant_id, row.category = merchant_id, category
                    row.balance_refs, row.account_balance = list(item.balance_refs), balance
            if visible:
                row.spend_day, row.spend_amount = spend_day(item.created), spend_of(item)
            if row.user_id is None:
                row.user_id = owner
            first = not row.announced and row.user_id is not None
            if not (visible or first or row.balance_matched != matched):
                continue
            row.balance_matched = matched
            row.announced = row.announced or first
            body = transaction_json(row, item)
            writes.append((row, body))
            if visible and sighting is not None and target.in_batch:
                seen = sightings.get(sighting.profile.id)
                sightings[sighting.profile.id] = sighting if seen is None else replace(
                    seen, first_seen=min(seen.first_seen, sighting.first_seen),
                    last_seen=max(seen.last_seen, sighting.last_seen),
                )  # fmt: skip
            for day, delta in moves.items():
                currency, total = moved.get((account, day), (item.currency, 0))
                moved[(account, day)] = (currency, total + delta)
            seen_at = key_seen.get(target.key) or account_seen.get(account) or (len(envelopes), None)
            announcement = None
            if (visible or first) and row.announced:
                change: Change = change_of(old, item) if visible else "created"
                announcement = _Announcement(item, body, change, first)
            changed.append((seen_at[0], row, moves, announcement, seen_at[1]))
        if not writes:
            return

        announced = [(row, a) for _, row, _, a, _ in changed if a is not None]
        saved = await repo.save_batch(
            session, writes, merchants=[sightings[m] for m in sorted(sightings)], spend_moves=moved,
            want_spend=sorted({*moved, *((row.account_id, row.spend_day) for row, _ in announced)}),
            want_merchants=sorted({row.merchant_id for row, _ in announced if row.merchant_id}),
        )  # fmt: skip
        # Announcements in batch order, each with its day's running spend as it stood after its own write.
        running = {pair: saved.spend.get(pair, 0) - delta for pair, (_, delta) in moved.items()}
        outgoing = []
        for _, row, moves, a, cause in sorted(changed, key=lambda c: (c[0], c[1].created, c[1].id)):
            for day, delta in moves.items():
                running[(row.account_id, day)] += delta
            if a is None or cause is None:
                continue
            pair = (row.account_id, row.spend_day)
            event = feed_event(
                row, kind=a.item.kind, currency=a.item.currency, body=a.body,
                spend_today=running.get(pair, saved.spend.get(pair, 0)),
                merchant=saved.merchants.get(row.merchant_id) if row.merchant_id else None,
                change=a.change, first=a.first,
            )  # fmt: skip
            outgoing.append((event, cause))
        await self.announcer.announce_many(session, outgoing)
