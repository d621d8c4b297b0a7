"""Accounts' business metrics.

Flows (top-ups, holds placed/ended, amounts) are counted in-band from the events accounts commits
(`observe_events`), once per committed change. The holds outstanding gauge comes from a periodic
count (`gauges_job`, wired as a background job in app.py).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select

from shared.db import Database
from shared.events.envelope import Envelope
from shared.events.outbox import observe_events
from shared.observability import periodic_refresh
from shared.web import Background

NEGATIVE_BALANCES = Counter(
    "ledger_negative_balance_postings_total",
    "Postings that left a customer balance below zero (forced clearing beyond the balance)",
)
TOPUPS = Counter("account_topups_total", "Completed top-ups", ["currency"])
TOPUP_AMOUNT = Counter("account_topup_amount_minor_total", "Topped-up amounts, in minor units", ["currency"])
HOLDS = Counter("account_holds_total", "Hold changes: placed, captured, released, expired", ["change"])
ACCOUNTS_OPENED = Counter("accounts_opened_total", "Accounts opened")
HOLDS_OUTSTANDING = Gauge("account_holds_outstanding", "Active holds", ["currency"])
HOLDS_OUTSTANDING_AMOUNT = Gauge(
    "account_holds_outstanding_amount_minor", "Amount held by active holds, in minor units", ["currency"]
)
log = logging.getLogger("services.accounts.observability")
_seen: set[str] = set()

_HOLD_CHANGES = {
    "account.hold.placed": "placed",
    "account.hold.captured": "captured",
    "account.hold.released": "released",
    "account.hold.expired": "expired",
}


def observe(envelope: Envelope) -> None:
    """Count a committed accounts event (called by the outbox after the commit)."""
    kind = envelope.type
    if kind == "account.topup.completed":
        currency = str(envelope.data.get("currency", "?"))
        TOPUPS.labels(currency).inc()
        TOPUP_AMOUNT.labels(currency).inc(int(envelope.data.get("amount") or 0))
    elif kind in _HOLD_CHANGES:
        HOLDS.labels(_HOLD_CHANGES[kind]).inc()
    elif kind == "account.created":
        ACCOUNTS_OPENED.inc()


observe_events("accounts", observe)


async def refresh_gauges(db: Database) -> None:
    from services.accounts.models import Hold

    async with db.read() as session:
        rows = (
            await session.execute(
                select(Hold.currency, func.count(), func.coalesce(func.sum(Hold.amount), 0))
                .where(Hold.status == "active")
                .group_by(Hold.currency)
            )
        ).all()
    now = {currency: (count, int(amount)) for currency, count, amount in rows}
    for currency in _seen | set(now):
        count, amount = now.get(currency, (0, 0))
        HOLDS_OUTSTANDING.labels(currency).set(count)
        HOLDS_OUTSTANDING_AMOUNT.labels(currency).set(amount)
    _seen.update(now)


def gauges_job(db: Database, every_seconds: float = 15.0) -> Background:
    """Background job: recount the holds outstanding every `every_seconds`."""
    return periodic_refresh("the accounts gauges", lambda: refresh_gauges(db), every_seconds)
