"""Accounts' queries. Receives the caller's session; never commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts.ledger import Line
from services.accounts.models import Account, Hold, JournalEntry, Posting, User
from shared.db import Executor, fetch_row, fetch_value
from shared.events.outbox import Staged
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


# The card path's statements: SQL with `$n` parameters, run on the hot path's plain connection
# (decision 0020) or, elsewhere, in a session.
_LOCK_ACCOUNT_ROW = (
    "SELECT kind, currency, balance, held, closed FROM accounts.accounts WHERE id = $1 FOR UPDATE"
)
_NEW_HOLD_AND_RESERVATION = """
    WITH new_hold AS (
        INSERT INTO accounts.holds (id, account_id, network_txn_id, amount, currency, status,
                                    decline_reason, created, updated, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)
        ON CONFLICT (network_txn_id) DO NOTHING
        RETURNING status
    ), reserved AS (
        UPDATE accounts.accounts SET held = held + $4
        WHERE id = $2 AND EXISTS (SELECT 1 FROM new_hold WHERE status = 'active')
    )"""
_INSERTED = "SELECT EXISTS (SELECT 1 FROM new_hold) AS inserted"
_INSERT_HOLD_AND_RESERVE = f"{_NEW_HOLD_AND_RESERVATION} {_INSERTED}"
_HOLD_COLUMNS = (
    "id", "account_id", "network_txn_id", "amount", "currency", "status", "decline_reason",
    "captured_amount", "entry_id", "created", "updated", "expires_at",
)  # fmt: skip
_HOLD_BY_NETWORK_ID = f"SELECT {', '.join(_HOLD_COLUMNS)} FROM accounts.holds WHERE network_txn_id = $1"


@dataclass(frozen=True, slots=True)
class LockedAccount:
    """An account's money as read under its row lock (a plain row, not an ORM object)."""

    id: str
    kind: str
    currency: str
    balance: int
    held: int
    closed: bool

    @property
    def available(self) -> int:
        return self.balance - self.held


async def lock_account_row(on: Executor, account_id: str) -> LockedAccount | None:
    """Row-lock the account and read what a hold decision needs."""
    row = await fetch_row(on, _LOCK_ACCOUNT_ROW, account_id)
    if row is None:
        return None
    kind, currency, balance, held, closed = row
    return LockedAccount(account_id, kind, currency, balance, held, closed)


async def insert_hold_and_reserve(on: Executor, hold: Hold, event: Staged | None = None) -> bool:
    """Insert the hold unless its network id is taken and, when it is active, add its amount to the
    account's held total and write its staged event, in one round trip (decision 0025). False if the
    id was taken (nothing written)."""
    args = (hold.id, hold.account_id, hold.network_txn_id, hold.amount, hold.currency, hold.status,
            hold.decline_reason, hold.created, hold.expires_at)  # fmt: skip
    if event is None:
        return bool(await fetch_value(on, _INSERT_HOLD_AND_RESERVE, *args))
    add_event = event.insert_sql(len(args) + 1, when="EXISTS (SELECT 1 FROM new_hold)")
    sql = f"{_NEW_HOLD_AND_RESERVATION}, event AS ({add_event}) {_INSERTED}"
    return bool(await fetch_value(on, sql, *args, *event.row))


async def hold_by_network_id(session: AsyncSession, network_txn_id: str) -> Hold | None:
    return await session.scalar(select(Hold).where(Hold.network_txn_id == network_txn_id))


async def hold_row(on: Executor, network_txn_id: str) -> Hold | None:
    """The hold under a network id, read in either kind of transaction, as an object not in any
    session (its changes are not saved)."""
    row = await fetch_row(on, _HOLD_BY_NETWORK_ID, network_txn_id)
    return None if row is None else Hold(**dict(zip(_HOLD_COLUMNS, row, strict=True)))


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
) -> str:
    entry_id = new_id("je")
    await session.execute(
        insert(JournalEntry).values(
            id=entry_id, kind=kind, account_id=account_id, reference=reference, description=description
        )
    )
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
