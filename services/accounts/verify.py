"""`bank ledger verify`: recompute every balance (customers' and pots') from the postings and compare."""

from __future__ import annotations

from sqlalchemy import func, select, text

from services.accounts import repository as repo
from services.accounts.models import Account
from shared.db import Database


async def verify_ledger(db: Database) -> list[str]:
    """Every inconsistency found, as a sentence; an empty list means the ledger is sound."""
    problems: list[str] = []
    async with db.read() as session:
        from_postings = await repo.balances_from_postings(session)
        from_holds = await repo.held_from_holds(session)
        for account in await session.scalars(select(Account).where(Account.kind.in_(("customer", "pot")))):
            posted = from_postings.get(account.id, 0)
            if account.balance != posted:
                problems.append(f"{account.id}: balance {account.balance} but postings sum to {posted}")
            held = from_holds.get(account.id, 0)
            if account.held != held:
                problems.append(f"{account.id}: held {account.held} but active holds sum to {held}")
        unbalanced = await session.execute(
            text(
                "SELECT entry_id, currency, sum(amount) FROM accounts.postings "
                "GROUP BY entry_id, currency HAVING sum(amount) <> 0"
            )
        )
        problems.extend(f"entry {e}: {c} postings sum to {t}, not 0" for e, c, t in unbalanced)
        total = await session.scalar(
            select(func.coalesce(func.sum(text("amount")), 0)).select_from(text("accounts.postings"))
        )
        if total:
            problems.append(f"all postings together sum to {total}, not 0")
    return problems
