"""Transactions' queries. Receives the caller's session; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions.feed import Fact
from services.transactions.merchants import MerchantProfile
from services.transactions.models import LedgerPoint, Merchant, Owner, SourceEvent, SpendDay, Transaction


async def owner(session: AsyncSession, account_id: str) -> Owner | None:
    return await session.get(Owner, account_id)


async def add_owner(session: AsyncSession, account_id: str, user_id: str, currency: str) -> None:
    await session.execute(
        insert(Owner)
        .values(account_id=account_id, user_id=user_id, currency=currency)
        .on_conflict_do_nothing()
    )


async def add_source_event(
    session: AsyncSession, event_id: str, key: str, event_type: str, time: datetime, data: dict[str, Any]
) -> bool:
    """Record an event of a transaction; False if it was already recorded."""
    inserted = await session.scalar(
        insert(SourceEvent)
        .values(event_id=event_id, source_key=key, event_type=event_type, time=time, data=data)
        .on_conflict_do_nothing()
        .returning(SourceEvent.event_id)
    )
    return inserted is not None


async def facts_of(session: AsyncSession, key: str) -> list[Fact]:
    rows = await session.execute(
        select(SourceEvent.event_id, SourceEvent.event_type, SourceEvent.time, SourceEvent.data).where(
            SourceEvent.source_key == key
        )
    )
    return [Fact(r.event_id, r.event_type, r.time, r.data) for r in rows]


async def transaction_by_key(session: AsyncSession, key: str) -> Transaction | None:
    return await session.scalar(select(Transaction).where(Transaction.source_key == key).with_for_update())


async def transaction_by_id(session: AsyncSession, tx_id: str, *, lock: bool = False) -> Transaction | None:
    query = select(Transaction).where(Transaction.id == tx_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def upsert_merchant(
    session: AsyncSession,
    p: MerchantProfile,
    network_id: str,
    raw_name: str,
    first_seen: datetime,
    last_seen: datetime,
) -> None:
    """Add a merchant to the directory; its created/updated span its transactions' events (the
    earliest and latest event times: the same in any order of arrival)."""
    stmt = insert(Merchant).values(
        id=p.id, group_id=p.group_id, network_id=network_id, raw_name=raw_name, name=p.name, mcc=p.mcc,
        category=p.category, emoji=p.emoji, logo=p.logo, online=p.online, atm=p.atm, address=p.address,
        created=first_seen, updated=last_seen,
    )  # fmt: skip
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Merchant.id],
            set_={
                "created": func.least(Merchant.created, stmt.excluded.created),
                "updated": func.greatest(Merchant.updated, stmt.excluded.updated),
            },
            where=or_(Merchant.created > stmt.excluded.created, Merchant.updated < stmt.excluded.updated),
        )
    )


async def merchants(session: AsyncSession, ids: set[str]) -> dict[str, Merchant]:
    if not ids:
        return {}
    return {m.id: m for m in await session.scalars(select(Merchant).where(Merchant.id.in_(ids)))}


async def add_ledger_point(
    session: AsyncSession, event_id: str, account_id: str, ref: str, time: datetime, available: int
) -> bool:
    inserted = await session.scalar(
        insert(LedgerPoint)
        .values(event_id=event_id, account_id=account_id, ref=ref, time=time, available=available)
        .on_conflict_do_nothing()
        .returning(LedgerPoint.event_id)
    )
    return inserted is not None


async def balance_after(
    session: AsyncSession, account_id: str, refs: Sequence[str], created: datetime
) -> tuple[int | None, bool]:
    """(available balance, matched): after the transaction's own first ledger movement if one is
    known, else the last movement of the account at or before the transaction (declines)."""
    if refs:
        own = await session.scalar(
            select(LedgerPoint.available)
            .where(LedgerPoint.ref.in_(list(refs)), LedgerPoint.account_id == account_id)
            .order_by(LedgerPoint.time, LedgerPoint.event_id)
            .limit(1)
        )
        if own is not None:
            return int(own), True
    before = await session.scalar(
        select(LedgerPoint.available)
        .where(LedgerPoint.account_id == account_id, LedgerPoint.time <= created)
        .order_by(LedgerPoint.time.desc(), LedgerPoint.event_id.desc())
        .limit(1)
    )
    return (int(before) if before is not None else None), False


async def touched_by_point(
    session: AsyncSession, account_id: str, ref: str, time: datetime
) -> list[Transaction]:
    """Transactions whose balance a new ledger movement may change: those it belongs to, and those
    that borrowed an earlier movement's figure and come after this one."""
    rows = await session.scalars(
        select(Transaction)
        .where(
            Transaction.account_id == account_id,
            or_(
                Transaction.balance_refs.contains([ref]),
                and_(Transaction.balance_matched.is_(False), Transaction.created >= time),
            ),
        )
        .order_by(Transaction.created, Transaction.id)
        .with_for_update()
    )
    return list(rows)


async def unannounced(session: AsyncSession, account_id: str) -> list[Transaction]:
    rows = await session.scalars(
        select(Transaction)
        .where(Transaction.account_id == account_id, Transaction.announced.is_(False))
        .order_by(Transaction.created, Transaction.id)
        .with_for_update()
    )
    return list(rows)


async def add_spend(session: AsyncSession, account_id: str, day: date, currency: str, delta: int) -> None:
    stmt = insert(SpendDay).values(account_id=account_id, day=day, currency=currency, amount=delta)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[SpendDay.account_id, SpendDay.day],
            set_={"amount": SpendDay.amount + stmt.excluded.amount},
        )
    )


async def spend_on(session: AsyncSession, account_id: str, day: date) -> int:
    amount = await session.scalar(
        select(SpendDay.amount).where(SpendDay.account_id == account_id, SpendDay.day == day)
    )
    return max(0, int(amount or 0))


async def page(
    session: AsyncSession,
    account_id: str,
    *,
    limit: int,
    since: tuple[datetime, str] | None,
    before: datetime | None,
) -> list[Transaction]:
    """One page of an account's transactions in created order, after `since` (a (created, id) cursor,
    exclusive) and before `before` (exclusive)."""
    query = select(Transaction).where(Transaction.account_id == account_id)
    if since is not None:
        query = query.where(tuple_(Transaction.created, Transaction.id) > tuple_(*since))
    if before is not None:
        query = query.where(Transaction.created < before)
    rows = await session.scalars(query.order_by(Transaction.created, Transaction.id).limit(limit))
    return list(rows)
