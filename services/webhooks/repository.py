"""Webhooks' queries. Receives the caller's session; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
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


async def active_webhook_ids(session: AsyncSession, account_id: str) -> list[str]:
    rows = await session.scalars(
        select(Webhook.id)
        .where(Webhook.account_id == account_id, Webhook.status == "active")
        .order_by(Webhook.created, Webhook.id)
    )
    return list(rows)


async def add_deliveries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One delivery per (webhook, event): a redelivered event adds nothing."""
    await session.execute(insert(Delivery).values(rows).on_conflict_do_nothing())


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
    interrupted: bool  # the previous attempt's lease ran out: its sender stopped before an answer
    now: datetime


# Oldest due deliveries first (event order), skipping rows another worker holds, at most `cap` in flight
# per webhook (counting attempts in flight anywhere). Rows locked by `due` but not claimed are released
# at commit.
CLAIM_SQL = text(
    """
WITH due AS (
    SELECT d.id, d.webhook_id, d.seq, d.lease_until AS old_lease
    FROM webhooks.deliveries d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.lease_until IS NULL OR d.lease_until < now())
      AND (SELECT count(*) FROM webhooks.deliveries b
           WHERE b.webhook_id = d.webhook_id AND b.lease_until > now()) < :cap
    ORDER BY d.seq
    LIMIT :scan
    FOR UPDATE OF d SKIP LOCKED
), ranked AS (
    SELECT due.*,
           row_number() OVER (PARTITION BY due.webhook_id ORDER BY due.seq) AS rn,
           (SELECT count(*) FROM webhooks.deliveries b
            WHERE b.webhook_id = due.webhook_id AND b.lease_until > now()) AS busy
    FROM due
)
UPDATE webhooks.deliveries d
SET lease_until = now() + make_interval(secs => :lease), attempts = d.attempts + 1
FROM ranked r, webhooks.webhooks w
WHERE d.id = r.id AND r.rn + r.busy <= :cap AND w.id = d.webhook_id
RETURNING d.id, d.seq, d.webhook_id, d.payload, d.attempts, d.retry_base, w.url, w.secret,
          w.previous_secret, w.previous_secret_expires_at, w.status AS webhook_status,
          r.old_lease IS NOT NULL AS interrupted, now() AS now
"""
)


async def claim(session: AsyncSession, *, limit: int, cap: int, lease_seconds: float) -> list[Claimed]:
    rows = await session.execute(CLAIM_SQL, {"cap": cap, "scan": limit, "lease": lease_seconds})
    claimed = []
    for r in rows.mappings().all():
        values = dict(r)
        values["attempt"] = values.pop("attempts")
        claimed.append(Claimed(**values))
    return sorted(claimed, key=lambda c: c.seq)


async def record_interrupted(session: AsyncSession, claimed: Sequence[Claimed]) -> None:
    """An attempt whose process stopped before it had an answer still shows in the history."""
    rows = [
        {
            "delivery_id": c.id,
            "webhook_id": c.webhook_id,
            "attempt": c.attempt - 1,
            "started_at": c.now,
            "error": "interrupted: the sender stopped before it had an answer",
            "succeeded": False,
        }
        for c in claimed
        if c.interrupted
    ]
    if rows:
        await session.execute(insert(Attempt), rows)


FINISH_SQL = text(
    """
UPDATE webhooks.deliveries
SET status = :status, lease_until = NULL, last_attempt_at = :started_at,
    last_status_code = :status_code, last_error = :error,
    next_attempt_at = CASE WHEN :status = 'pending' THEN now() + make_interval(secs => :delay)
                           ELSE next_attempt_at END,
    delivered_at = CASE WHEN :status = 'succeeded' THEN now() ELSE delivered_at END
WHERE id = :id AND attempts = :attempt AND status = 'pending'
"""
)


async def finish(
    session: AsyncSession, results: list[dict[str, Any]], attempts: list[dict[str, Any]]
) -> None:
    if attempts:
        await session.execute(insert(Attempt), attempts)
    if results:
        await session.execute(FINISH_SQL, results)


async def release(session: AsyncSession, claimed: Sequence[tuple[str, int]]) -> None:
    """Give back deliveries whose attempt was stopped (shutdown): due again at once, attempt not counted."""
    await session.execute(
        text(
            "UPDATE webhooks.deliveries SET lease_until = NULL, attempts = attempts - 1 "
            "WHERE id = :id AND attempts = :attempt AND status = 'pending'"
        ),
        [{"id": i, "attempt": a} for i, a in claimed],
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
