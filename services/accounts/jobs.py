"""Accounts' periodic jobs. Each is an edge: one transaction per unit of work."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from services.accounts import repository as repo
from services.accounts.service import LedgerService
from shared.db import Database
from shared.web import Background

log = logging.getLogger("services.accounts.jobs")

BATCH = 200


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
