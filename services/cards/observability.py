"""Cards' business metrics, and a log line that cannot become a flood.

Most business figures are counted in-band from the events cards commits (`observe_events`): a
decision counts once, after its transaction commits, whichever code path made it. Gauges that are
states rather than flows (cards by status, holds outstanding) come from a periodic count
(`gauges_job`, wired as a background job in app.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select

from shared.db import Database
from shared.events.envelope import Envelope
from shared.events.outbox import observe_events
from shared.observability import log_fields, periodic_refresh
from shared.web import Background

AUTHORISATIONS = Counter(
    "card_authorisations_total", "Authorisation answers (0110) by ISO 8583 response code", ["response_code"]
)
STAGES = ("queue", "lookup", "decision", "accounts", "record")
STAGE_SECONDS = Histogram(
    "card_authorisation_stage_seconds",
    "Where an authorisation's time goes: waiting for its batch (per message), then per batch the card "
    "lookup (pool, BEGIN, SELECTs), the decisions (daily totals), the accounts call, writing and committing",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5),
)
_STAGE = {stage: STAGE_SECONDS.labels(stage) for stage in STAGES}
ISSUER_UNAVAILABLE = Counter(
    "card_issuer_unavailable_total", "91 answers by why accounts did not answer in time", ["cause"]
)
SHED = Counter(
    "card_authorisations_shed_total",
    "Authorisations refused undecided (429), by reason: overloaded (a standing queue, decision 0036) or "
    "queue_timeout (waited past the queue limit or the caller's deadline)",
    ["reason"],
)
COMPENSATIONS = Counter(
    "card_compensations_total", "Holds the compensation job finished with, by outcome", ["outcome"]
)


class Throttled:
    """A warning logged at most once per `seconds`, carrying how many occurrences it stands for: an
    overload answered with thousands of 91s must not also pay for thousands of log lines."""

    def __init__(self, logger: logging.Logger, seconds: float = 5.0) -> None:
        self.logger = logger
        self.seconds = seconds
        self._last = -float("inf")
        self._count = 0

    def warning(self, message: str, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self.logger.warning(message, extra=log_fields(**fields, occurrences=self._count))
            self._last, self._count = now, 0


BATCH_SIZE = Histogram(
    "card_authorisation_batch_size",
    "Authorisations decided together (whatever arrived while the previous batch was in flight)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)


def queued(seconds: float) -> None:
    _STAGE["queue"].observe(seconds)


class Stopwatch:
    """Timing spans of one batch: `lap(stage)` records the time since the previous lap."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        _STAGE[stage].observe(now - self._last)
        self._last = now


DECISIONS = Counter(
    "card_authorisation_decisions_total",
    "Committed authorisation decisions of known cards, by decision and Mondo decline reason",
    ["decision", "reason"],
)
AUTHORISED_AMOUNT = Counter(
    "card_authorised_amount_minor_total", "Approved authorisation amounts, in minor units", ["currency"]
)
SETTLED_AMOUNT = Counter(
    "card_settled_amount_minor_total", "Cleared (settled) amounts, in minor units", ["currency", "kind"]
)
REVERSED_AMOUNT = Counter(
    "card_reversed_amount_minor_total", "Amounts released by reversals, in minor units", ["currency"]
)
CARDS = Gauge("cards", "Cards by status (active, frozen, cancelled)", ["status"])
OPEN_HOLDS = Gauge(
    "card_authorisations_open", "Approved authorisations not yet settled or reversed (their holds stand)"
)
log = logging.getLogger("services.cards.observability")


def observe(envelope: Envelope) -> None:
    """Count a committed cards event (called by the outbox after the commit)."""
    data = envelope.data
    kind = envelope.type
    if kind == "card.authorisation.approved":
        DECISIONS.labels("approved", "").inc()
        AUTHORISED_AMOUNT.labels(data.get("currency", "?")).inc(int(data.get("amount") or 0))
    elif kind == "card.authorisation.declined":
        DECISIONS.labels("declined", str(data.get("decline_reason") or "OTHER")).inc()
    elif kind == "card.authorisation.reversed":
        REVERSED_AMOUNT.labels(data.get("currency", "?")).inc(int(data.get("reversed_amount") or 0))
    elif kind in ("card.transaction.settled", "card.refund.settled"):
        what = "refund" if kind == "card.refund.settled" else "purchase"
        SETTLED_AMOUNT.labels(data.get("currency", "?"), what).inc(int(data.get("amount") or 0))


observe_events("cards", observe)


async def refresh_gauges(db: Database) -> None:
    from services.cards.models import Authorisation, Card

    async with db.read() as session:
        by_status = dict(
            (await session.execute(select(Card.status, func.count()).group_by(Card.status))).all()
        )
        open_holds = await session.scalar(
            select(func.count()).select_from(Authorisation).where(Authorisation.status == "approved")
        )
    for status in ("active", "frozen", "cancelled", *by_status):
        CARDS.labels(status).set(by_status.get(status, 0))
    OPEN_HOLDS.set(int(open_holds or 0))


def gauges_job(db: Database, every_seconds: float = 15.0) -> Background:
    """Background job: recount the state gauges every `every_seconds`."""
    return periodic_refresh("the cards gauges", lambda: refresh_gauges(db), every_seconds)
