"""Accounts' periodic jobs. Each is an edge: one transaction per unit of work."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from services.accounts import repository as repo
from services.accounts.cards_client import CardsClient
from services.accounts.service import LedgerService
from shared.db import Database
from shared.web import Background

log = logging.getLogger("services.accounts.jobs")

BATCH = 200
UNCONFIRMED_BATCH = 5_000


async def expire_due_holds(db: Database, ledger: LedgerService) -> int:
    """Release every hold past its expiry, one transaction per hold (so no job holds many locks)."""
    now = datetime.now(UTC)
    async with db.read() as session:
        due = await repo.expired_holds(session, now, BATCH)
    expired = 0
    for _account_id, network_txn_id in due:
        async with db.transaction() as session:
            expired += await ledger.expire_hold(session, network_txn_id, now)
    return expired


def hold_expiry_job(db: Database, ledger: LedgerService, every_seconds: float) -> Background:
    async def run() -> None:
        while True:
            try:
                while await expire_due_holds(db, ledger) >= BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hold expiry failed; will retry")
            await asyncio.sleep(every_seconds)

    run.__name__ = "hold_expiry"
    return run


async def resolve_unconfirmed_holds(
    db: Database, ledger: LedgerService, cards: CardsClient, older_than_seconds: float
) -> int:
    """Ask cards about provisional holds old enough that their batch has long been answered, keep
    those an approved authorisation stands behind and release the rest (decision 0031). Cards'
    answer is final: it closes every id it has not recorded. Returns how many were resolved."""
    before = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
    async with db.read() as session:
        due = await repo.unconfirmed_before(session, before, UNCONFIRMED_BATCH)
    if not due:
        return 0
    verdicts = await cards.resolve(due)
    async with db.transaction() as session:
        await repo.forget_unconfirmed(session, sorted(verdicts.backed))
    for network_txn_id in sorted(verdicts.unbacked):  # rare (a crash): one transaction each
        async with db.transaction() as session:
            if await ledger.release_unbacked(session, network_txn_id):
                log.warning("released a hold no authorisation stands behind", extra={
                    "fields": {"network_txn_id": network_txn_id}})  # fmt: skip
    return len(verdicts.backed) + len(verdicts.unbacked)


def unconfirmed_holds_job(
    db: Database, ledger: LedgerService, cards: CardsClient, every_seconds: float, older_than_seconds: float
) -> Background:
    async def run() -> None:
        while True:
            try:
                while (
                    await resolve_unconfirmed_holds(db, ledger, cards, older_than_seconds)
                    >= UNCONFIRMED_BATCH
                ):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # cards down or restarting: the holds wait for the next round
                log.warning(
                    "could not resolve unconfirmed holds; will retry", extra={"fields": {"error": str(exc)}}
                )
            await asyncio.sleep(every_seconds)

    run.__name__ = "unconfirmed_holds"
    return run
