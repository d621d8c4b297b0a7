"""The compensation job: release holds that a failed or late accounts call may have left behind.

A compensation is recorded in the same transaction as the 91 answer (or the
reversal) that makes the hold unwanted, so it cannot be lost. The job releases
by network id, which accounts treats idempotently. "No such hold" is not final
at once: the hold request we gave up on may still be queued in accounts (behind
the account's row lock, say) and land a moment later, so the release is retried
until the compensation is `compensation_settle_seconds` old. One transaction
per compensation, its row locked (SKIP LOCKED), so replicas share the work.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from services.cards import repository as repo
from services.cards.accounts_client import AccountsClient, AccountsRefused, AccountsUnavailable
from services.cards.config import CardsSettings
from services.cards.observability import COMPENSATIONS
from shared.db import Database
from shared.observability import log_fields
from shared.web import Background

log = logging.getLogger("services.cards.compensation")

BATCH = 100
MAX_BACKOFF_SECONDS = 60.0


async def compensate_due(db: Database, accounts: AccountsClient, settings: CardsSettings) -> int:
    """Work through the compensations that are due; return how many finished."""
    async with db.read() as session:
        due = await repo.due_compensations(session, datetime.now(UTC), BATCH)
    finished = 0
    for hold_id in due:
        async with db.transaction() as session:
            comp = await repo.claim_compensation(session, hold_id)
            if comp is None:
                continue
            now = datetime.now(UTC)
            comp.attempts += 1
            # Backing off keeps an overload (many 91s at once) from being amplified by this job.
            backoff = timedelta(seconds=settings.compensation_poll_seconds * 2 ** min(comp.attempts, 10))
            try:
                status = await accounts.release_hold(hold_id)
            except (AccountsUnavailable, AccountsRefused) as exc:
                comp.last_error = str(exc)
                comp.next_attempt_at = now + min(backoff, timedelta(seconds=MAX_BACKOFF_SECONDS))
                continue
            settles_at = comp.created + timedelta(seconds=settings.compensation_settle_seconds)
            if status == "missing" and now < settles_at:
                comp.next_attempt_at = min(now + backoff, settles_at)
                continue
            comp.status, comp.completed = "done", now
            comp.outcome = {"missing": "no_hold", "released": "released"}.get(status, status)
            finished += 1
            COMPENSATIONS.labels(comp.outcome).inc()
            if comp.outcome == "released":
                log.info("released a hold left behind", extra=log_fields(hold_id=hold_id, reason=comp.reason))
    return finished


def compensation_job(db: Database, accounts: AccountsClient, settings: CardsSettings) -> Background:
    async def run() -> None:
        while True:
            try:
                await compensate_due(db, accounts, settings)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("compensation run failed; will retry")
            await asyncio.sleep(settings.compensation_poll_seconds)

    run.__name__ = "compensations"
    return run
