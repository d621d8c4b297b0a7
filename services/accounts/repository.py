"""Accounts' queries. Receives the caller's session; never commits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts.ledger import Funds, Line
from services.accounts.models import Account, Hold, JournalEntry, Payment, Posting, Pot, User
from shared.db import Executor, execute, fetch_all
from shared.ids import new_id


async def lock_account(session: AsyncSession, account_id: str) -> Account | None:
    """Row-lock the account: every change to one account's money is serialised here. Populates an
    already-loaded object afresh: the hold path changes `held` with SQL, not through the ORM."""
    return await session.scalar(
        select(Account)
        .where(Account.id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def get_account(session: AsyncSession, account_id: str) -> Account | None:
    return await session.get(Account, account_id)


async def customer_accounts(session: AsyncSession, user_id: str) -> list[Account]:
    rows = await session.scalars(
        select(Account)
        .where(Account.user_id == user_id, Account.kind == "customer")
        .order_by(Account.created)
    )
    return list(rows)


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


# The card path's statements: set-based SQL with `$n` parameters, whatever the batch's size (decision
# 0030), run on the hot path's plain connection or in a session.
_LOCK_FUNDS = """
    SELECT id, kind, currency, balance, held, closed FROM accounts.accounts
    WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""
_HOLD_COLUMNS = (
    "id", "account_id", "network_txn_id", "amount", "currency", "status", "decline_reason",
    "captured_amount", "entry_id", "created", "updated", "expires_at",
)  # fmt: skip
_HOLDS_BY_NETWORK_IDS = (
    f"SELECT {', '.join(_HOLD_COLUMNS)} FROM accounts.holds WHERE network_txn_id = ANY($1::text[])"
)
# New holds; each active one adds its amount to its account's held total and, when provisional ($10),
# waits in unconfirmed_holds until cards is seen to have recorded it (decision 0031). Returns the
# network ids inserted: one taken meanwhile by a concurrent batch is skipped.
_INSERT_HOLDS = """
    WITH new_holds AS (
        INSERT INTO accounts.holds (id, account_id, network_txn_id, amount, currency, status,
                                    decline_reason, created, updated, expires_at)
        SELECT h.id, h.account_id, h.nid, h.amount, h.currency, h.status, h.reason, $9, $9, h.expires_at
        FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                    $8::timestamptz[]) AS h(id, account_id, nid, amount, currency, status, reason, expires_at)
        ON CONFLICT (network_txn_id) DO NOTHING
        RETURNING network_txn_id, account_id, amount, status
    ), reserved AS (
        UPDATE accounts.accounts a SET held = a.held + r.total
        FROM (SELECT account_id, sum(amount) AS total FROM new_holds WHERE status = 'active'
              GROUP BY account_id) r
        WHERE a.id = r.account_id
    ), unconfirmed AS (
        INSERT INTO accounts.unconfirmed_holds (network_txn_id, created)
        SELECT network_txn_id, $9 FROM new_holds WHERE status = 'active' AND $10::boolean
    )
    SELECT network_txn_id FROM new_holds
"""


async def lock_funds(on: Executor, account_ids: Iterable[str]) -> dict[str, Funds]:
    """Row-lock the accounts (in id order, so two batches never deadlock) and read their money."""
    rows = await fetch_all(on, _LOCK_FUNDS, sorted(set(account_ids)))
    return {row[0]: Funds(*row[1:]) for row in rows}


async def holds_by_network_ids(on: Executor, network_txn_ids: Sequence[str]) -> dict[str, Hold]:
    """The holds already placed under these network ids, as objects in no session."""
    rows = await fetch_all(on, _HOLDS_BY_NETWORK_IDS, list(network_txn_ids))
    holds = (Hold(**dict(zip(_HOLD_COLUMNS, row, strict=True))) for row in rows)
    return {hold.network_txn_id: hold for hold in holds}


async def insert_holds(on: Executor, holds: Sequence[Hold], now: datetime, *, provisional: bool) -> set[str]:
    """Insert the holds and reserve the active ones' amounts, in one statement; the network ids
    inserted (a hold whose id a concurrent batch took is left out, nothing written for it)."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
    for hold in holds:
        values = (hold.id, hold.account_id, hold.network_txn_id, hold.amount, hold.currency, hold.status,
                  hold.decline_reason, hold.expires_at)  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    rows = await fetch_all(on, _INSERT_HOLDS, *columns, now, provisional)
    return {row[0] for row in rows}


_UNCONFIRMED_BEFORE = """
    SELECT network_txn_id FROM accounts.unconfirmed_holds WHERE created < $1 ORDER BY created LIMIT $2
"""


async def unconfirmed_before(on: Executor, before: datetime, limit: int) -> list[str]:
    """Provisional holds placed before `before`, oldest first."""
    return [row[0] for row in await fetch_all(on, _UNCONFIRMED_BEFORE, before, limit)]


async def forget_unconfirmed(on: Executor, network_txn_ids: Sequence[str]) -> None:
    await execute(
        on,
        "DELETE FROM accounts.unconfirmed_holds WHERE network_txn_id = ANY($1::text[])",
        list(network_txn_ids),
    )


async def hold_by_network_id(session: AsyncSession, network_txn_id: str) -> Hold | None:
    return await session.scalar(select(Hold).where(Hold.network_txn_id == network_txn_id))


async def entry_by_reference(session: AsyncSession, kind: str, reference: str) -> JournalEntry | None:
    return await session.scalar(
        select(JournalEntry).where(JournalEntry.kind == kind, JournalEntry.reference == reference)
    )


async def posted_amount(session: AsyncSession, entry_id: str, account_id: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(Posting.amount), 0)).where(
            Posting.entry_id == entry_id, Posting.account_id == account_id
        )
    )
    return int(total or 0)


async def add_entry(
    session: AsyncSession, *, kind: str, account_id: str, reference: str, description: str, lines: list[Line]
) -> str | None:
    """A journal entry and its postings; None (nothing written) if its kind and reference are taken."""
    entry_id = new_id("je")
    added = await session.scalar(
        insert(JournalEntry)
        .values(id=entry_id, kind=kind, account_id=account_id, reference=reference, description=description)
        .on_conflict_do_nothing()
        .returning(JournalEntry.id)
    )
    if added is None:
        return None
    await session.execute(
        insert(Posting),
        [{"entry_id": entry_id, "account_id": ln.account_id, "amount": ln.amount, "currency": ln.currency}
         for ln in lines],
    )  # fmt: skip
    return entry_id


async def expired_holds(session: AsyncSession, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(account id, network txn id) of active holds past their expiry, oldest first."""
    rows = await session.execute(
        select(Hold.account_id, Hold.network_txn_id)
        .where(Hold.status == "active", Hold.expires_at <= now)
        .order_by(Hold.expires_at)
        .limit(limit)
    )
    return [(r.account_id, r.network_txn_id) for r in rows]


async def card_spend_since(session: AsyncSession, account_id: str, since: datetime) -> int:
    """Card money out since `since`: captured and forced debits, plus holds still pending."""
    posted = await session.scalar(
        select(func.coalesce(func.sum(Posting.amount), 0))
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(
            Posting.account_id == account_id,
            JournalEntry.kind.in_(("card_capture", "card_force_debit", "card_credit")),
            Posting.created >= since,
        )
    )
    pending = await session.scalar(
        select(func.coalesce(func.sum(Hold.amount), 0)).where(
            Hold.account_id == account_id, Hold.status == "active", Hold.created >= since
        )
    )
    return max(0, -int(posted or 0) + int(pending or 0))


async def balances_from_postings(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Posting.account_id, func.sum(Posting.amount)).group_by(Posting.account_id)
    )
    return {account_id: int(total) for account_id, total in rows}


async def held_from_holds(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Hold.account_id, func.sum(Hold.amount))
        .where(Hold.status == "active")
        .group_by(Hold.account_id)
    )
    return {account_id: int(total) for account_id, total in rows}


# Pots and payments between customers (decision 0037) ---------------------------------------------


async def lock_accounts(session: AsyncSession, account_ids: Iterable[str]) -> dict[str, Account]:
    """Row-lock several accounts in id order (as every other lock in accounts: no deadlock cycles)."""
    rows = await session.scalars(
        select(Account)
        .where(Account.id.in_(sorted(set(account_ids))))
        .order_by(Account.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {account.id: account for account in rows}


async def get_pot(session: AsyncSession, pot_id: str) -> Pot | None:
    return await session.get(Pot, pot_id, populate_existing=True)


async def pots_of(session: AsyncSession, current_account_id: str) -> list[tuple[Pot, Account]]:
    """An account's pots, oldest first, each with its ledger account (its money)."""
    rows = await session.execute(
        select(Pot, Account)
        .join(Account, Account.id == Pot.id)
        .where(Pot.current_account_id == current_account_id)
        .order_by(Pot.created, Pot.id)
    )
    return [(pot, account) for pot, account in rows.all()]


async def pots_balance(session: AsyncSession, current_account_id: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(Account.balance), 0))
        .join(Pot, Pot.id == Account.id)
        .where(Pot.current_account_id == current_account_id, Account.kind == "pot")
    )
    return int(total or 0)


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


async def first_account_of(session: AsyncSession, user_id: str) -> Account | None:
    """A customer's oldest open current account: where money sent to their email goes."""
    return await session.scalar(
        select(Account)
        .where(Account.user_id == user_id, Account.kind == "customer", Account.closed.is_(False))
        .order_by(Account.created, Account.id)
        .limit(1)
    )


async def payments_sent_since(session: AsyncSession, account_id: str, since: datetime) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(Payment.amount), 0)).where(
            Payment.source_account_id == account_id, Payment.created >= since
        )
    )
    return int(total or 0)


async def add_transfer_entry(
    session: AsyncSession, *, kind: str, account_id: str, reference: str, description: str, lines: list[Line]
) -> str:
    """A journal entry between two of the bank's own accounts (its reference is a fresh id: never taken)."""
    entry_id = await add_entry(
        session, kind=kind, account_id=account_id, reference=reference, description=description, lines=lines
    )
    assert entry_id is not None, f"{kind} {reference} posted twice"
    return entry_id
