"""Webhooks' queries. Receives the caller's session; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.webhooks.models import Attempt, Delivery, Webhook


async def get_webhook(session: AsyncSession, webhook_id: str, *, lock: bool = False) -> Webhook | None:
    query = select(Webhook).where(Webhook.id == webhook_id, Webhook.status != "deleted")
    return await session.scalar(query.with_for_update() if lock else query)


async def webhooks_of_account(session: AsyncSession, account_id: str) -> list[Webhook]:
    rows = await session.scalars(
        select(Webhook)
        .where(Webhook.account_id == account_id, Webhook.status != "deleted")
        .order_by(Webhook.created, Webhook.id)
    )
    return list(rows)


async def count_webhooks(session: AsyncSession, account_id: str) -> int:
    total = await session.scalar(
        select(func.count()).where(Webhook.account_id == account_id, Webhook.status != "deleted")
    )
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """A feed event to deliver to the account's webhooks, with the body every attempt sends."""

    event_id: str
    account_id: str
    event_type: str
    event_time: datetime
    payload: str


# One statement per batch of events, whatever its size: a delivery row for every active webhook of each
# event's account (no read first), in event order, then the webhooks' (created, id): `seq`, the claim's
# order, follows the events. A redelivered event adds nothing (unique webhook + event). The id is `msg_`
# + 10 characters of millisecond time (from the caller, as shared.ids) + 16 random hexadecimal digits
# (Crockford base32 characters too), so ids keep sorting by creation time.
ADD_DELIVERIES_SQL = text(
    """
INSERT INTO webhooks.deliveries (id, webhook_id, account_id, event_id, event_type, event_time, payload)
SELECT :id_prefix || upper(substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)),
       w.id, w.account_id, e.event_id, e.event_type, e.event_time, e.payload
FROM unnest(CAST(:event_ids AS text[]), CAST(:account_ids AS text[]), CAST(:event_types AS text[]),
            CAST(:event_times AS timestamptz[]), CAST(:payloads AS text[])) WITH ORDINALITY
     AS e(event_id, account_id, event_type, event_time, payload, n)
JOIN webhooks.webhooks w ON w.account_id = e.account_id AND w.status = 'active'
ORDER BY e.n, w.created, w.id
ON CONFLICT DO NOTHING
"""
)


async def add_deliveries(session: AsyncSession, *, id_prefix: str, events: Sequence[FeedEvent]) -> int:
    """One delivery per active webhook of each event's account, in one statement. How many added."""
    if not events:
        return 0
    result = await session.execute(
        ADD_DELIVERIES_SQL,
        {
            "id_prefix": id_prefix,
            "event_ids": [e.event_id for e in events],
            "account_ids": [e.account_id for e in events],
            "event_types": [e.event_type for e in events],
            "event_times": [e.event_time for e in events],
            "payloads": [e.payload for e in events],
        },
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def fail_pending(session: AsyncSession, webhook_id: str, reason: str) -> None:
    await session.execute(
        update(Delivery)
        .where(Delivery.webhook_id == webhook_id, Delivery.status == "pending")
        .values(status="failed", last_error=reason, lease_until=None)
    )


# -- the worker -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    seq: int
    webhook_id: str
    payload: str
    attempt: int  # this attempt's number (1 = the first)
    retry_base: int
    url: str
    secret: bytes
    previous_secret: bytes | None
    previous_secret_expires_at: datetime | None
    webhook_status: str
    now: datetime


# Oldest due deliveries first (event order), skipping rows another worker holds, at most `cap` in flight
# per webhook, counting attempts in flight anywhere (rows with a lease: the partial index
# ix_deliveries_in_flight, a few rows). The scan walks ix_deliveries_due (pending rows without a lease,
# in seq order), skipping the rows of webhooks already at their cap without counting per row; `ranked`
# keeps at most the cap's remaining room of each webhook's rows. Rows locked by `due` but not claimed are
# released at commit. The webhook's row is joined once here: the sender needs no other read.
CLAIM_SQL = text(
    """
WITH busy AS MATERIALIZED (
    SELECT webhook_id, count(*) AS n FROM webhooks.deliveries
    WHERE lease_until IS NOT NULL GROUP BY webhook_id
), due AS (
    SELECT d.id, d.webhook_id, d.seq
    FROM webhooks.deliveries d
    WHERE d.status = 'pending' AND d.lease_until IS NULL AND d.next_attempt_at <= now()
      AND d.webhook_id NOT IN (SELECT webhook_id FROM busy WHERE n >= :cap)
    ORDER BY d.seq
    LIMIT :scan
    FOR UPDATE OF d SKIP LOCKED
), ranked AS (
    SELECT due.id,
           row_number() OVER (PARTITION BY due.webhook_id ORDER BY due.seq) + coalesce(b.n, 0) AS slot
    FROM due LEFT JOIN busy b ON b.webhook_id = due.webhook_id
)
UPDATE webhooks.deliveries d
SET lease_until = now() + make_interval(secs => :lease), attempts = d.attempts + 1
FROM ranked r, webhooks.webhooks w
WHERE d.id = r.id AND r.slot <= :cap AND w.id = d.webhook_id
RETURNING d.id, d.seq, d.webhook_id, d.payload, d.attempts AS attempt, d.retry_base, w.url, w.secret,
          w.previous_secret, w.previous_secret_expires_at, w.status AS webhook_status, now() AS now
"""
)


async def claim(session: AsyncSession, *, limit: int, cap: int, lease_seconds: float) -> list[Claimed]:
    rows = await session.execute(CLAIM_SQL, {"cap": cap, "scan": limit, "lease": lease_seconds})
    return sorted((Claimed(*r) for r in rows.all()), key=lambda c: c.seq)


# Attempts whose lease ran out (their process was killed, or stopped answering): recorded as
# `interrupted` and due again at once (the attempt stays counted). `held` are this process's own
# attempts, in flight or waiting to be recorded: never taken back from under it.
REAP_SQL = text(
    """
WITH expired AS (
    UPDATE webhooks.deliveries SET lease_until = NULL
    WHERE status = 'pending' AND lease_until < now() AND NOT (id = ANY(:held))
    RETURNING id, webhook_id, attempts
)
INSERT INTO webhooks.attempts (delivery_id, webhook_id, attempt, started_at, error, succeeded)
SELECT id, webhook_id, attempts, now(), 'interrupted: the sender stopped before it had an answer', false
FROM expired
"""
)

# This process's attempts keep their leases while they are in flight or waiting to be recorded.
RENEW_SQL = text(
    """
UPDATE webhooks.deliveries d SET lease_until = now() + make_interval(secs => :lease)
FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS integer[])) AS h(id, attempt)
WHERE d.id = h.id AND d.attempts = h.attempt AND d.status = 'pending' AND d.lease_until IS NOT NULL
"""
)


async def keep_leases(
    session: AsyncSession, held: Sequence[tuple[str, int]], *, lease_seconds: float
) -> None:
    """Renew this process's leases, then take back the attempts whose lease ran out."""
    ids = [i for i, _ in held]
    if held:
        await session.execute(
            RENEW_SQL, {"ids": ids, "attempts": [a for _, a in held], "lease": lease_seconds}
        )
    await session.execute(REAP_SQL, {"held": ids})


# Many outcomes in one statement each: the attempt rows, and the deliveries' next state (guarded by
# `attempts`: an outcome whose delivery was claimed again since changes nothing).
ADD_ATTEMPTS_SQL = text(
    """
INSERT INTO webhooks.attempts
    (delivery_id, webhook_id, attempt, started_at, latency_ms, status_code, error, succeeded, response_body)
SELECT * FROM unnest(CAST(:delivery_id AS text[]), CAST(:webhook_id AS text[]), CAST(:attempt AS integer[]),
                     CAST(:started_at AS timestamptz[]), CAST(:latency_ms AS integer[]),
                     CAST(:status_code AS integer[]), CAST(:error AS text[]), CAST(:succeeded AS boolean[]),
                     CAST(:response_body AS text[]))
"""
)

FINISH_SQL = text(
    """
UPDATE webhooks.deliveries d
SET status = f.status, lease_until = NULL, last_attempt_at = f.started_at,
    last_status_code = f.status_code, last_error = f.error,
    next_attempt_at = CASE WHEN f.status = 'pending' THEN now() + make_interval(secs => f.delay)
                           ELSE d.next_attempt_at END,
    delivered_at = CASE WHEN f.status = 'succeeded' THEN now() ELSE d.delivered_at END
FROM unnest(CAST(:id AS text[]), CAST(:attempt AS integer[]), CAST(:status AS text[]),
            CAST(:delay AS double precision[]), CAST(:status_code AS integer[]), CAST(:error AS text[]),
            CAST(:started_at AS timestamptz[]))
     AS f(id, attempt, status, delay, status_code, error, started_at)
WHERE d.id = f.id AND d.attempts = f.attempt AND d.status = 'pending'
"""
)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows] for key in rows[0]}


async def finish(
    session: AsyncSession, results: list[dict[str, Any]], attempts: list[dict[str, Any]]
) -> None:
    if attempts:
        await session.execute(ADD_ATTEMPTS_SQL, _columns(attempts))
    if results:
        await session.execute(FINISH_SQL, _columns(results))


async def release(session: AsyncSession, claimed: Sequence[tuple[str, int]]) -> None:
    """Give back deliveries whose attempt was stopped (shutdown): due again at once, attempt not counted."""
    await session.execute(
        text(
            "UPDATE webhooks.deliveries d SET lease_until = NULL, attempts = d.attempts - 1 "
            "FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS integer[])) AS h(id, attempt) "
            "WHERE d.id = h.id AND d.attempts = h.attempt AND d.status = 'pending'"
        ),
        {"ids": [i for i, _ in claimed], "attempts": [a for _, a in claimed]},
    )


async def healthy(session: AsyncSession, webhook_ids: Sequence[str]) -> None:
    await session.execute(
        update(Webhook)
        .where(Webhook.id.in_(webhook_ids), Webhook.failing_since.is_not(None))
        .values(failing_since=None)
    )


async def failing(session: AsyncSession, failures: dict[str, datetime]) -> None:
    """Mark when each webhook started failing (kept if it already was)."""
    for webhook_id, since in failures.items():
        await session.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.failing_since.is_(None))
            .values(failing_since=since)
        )


async def disable(
    session: AsyncSession, webhook_ids: Sequence[str], reason: str, *, failing_for: float | None = None
) -> list[Webhook]:
    """Disable the still-active webhooks among these (if `failing_for`: only those failing that long)."""
    query = update(Webhook).where(Webhook.id.in_(webhook_ids), Webhook.status == "active")
    if failing_for is not None:
        query = query.where(
            Webhook.failing_since <= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, failing_for)
        )
    rows = await session.scalars(
        query.values(status="disabled", disabled_reason=reason, updated=func.now()).returning(Webhook)
    )
    return list(rows)


# -- history and re-sending -----------------------------------------------------------------------------


async def deliveries_of(
    session: AsyncSession, webhook_id: str, limit: int, before: datetime | None
) -> list[Delivery]:
    query = select(Delivery).where(Delivery.webhook_id == webhook_id)
    if before is not None:
        query = query.where(Delivery.created < before)
    rows = await session.scalars(query.order_by(Delivery.created.desc(), Delivery.seq.desc()).limit(limit))
    return list(rows)


async def attempts_of(session: AsyncSession, delivery_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    found: dict[str, list[Attempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        rows = await session.scalars(
            select(Attempt).where(Attempt.delivery_id.in_(delivery_ids)).order_by(Attempt.attempt, Attempt.id)
        )
        for a in rows:
            found[a.delivery_id].append(a)
    return found


async def get_delivery(session: AsyncSession, webhook_id: str, delivery_id: str) -> Delivery | None:
    return await session.scalar(
        select(Delivery)
        .where(Delivery.id == delivery_id, Delivery.webhook_id == webhook_id)
        .with_for_update()
    )


RESEND = {"status": "pending", "next_attempt_at": func.now(), "retry_base": Delivery.attempts}


async def resend(session: AsyncSession, delivery_id: str) -> None:
    await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**RESEND))


async def recover(session: AsyncSession, webhook_id: str, since: datetime) -> int:
    ids = await session.scalars(
        update(Delivery)
        .where(Delivery.webhook_id == webhook_id, Delivery.status == "failed", Delivery.created >= since)
        .values(**RESEND)
        .returning(Delivery.id)
    )
    return len(list(ids))
