"""Reads and writes of the notifications schema. Every function takes the caller's session; none commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    Text,
    bindparam,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications.messages import Message
from services.notifications.models import AccountOwner, Delivery, Device, FeedItem
from shared.ids import new_id

# -- devices ---------------------------------------------------------------------------------------------


async def register_device(
    session: AsyncSession, user_id: str, platform: str, token: str, app_version: str | None
) -> tuple[Device, bool]:
    """Register (or re-register) a device token for `user_id`; (device, True if it is new).

    A token already known moves to this user and becomes active again: a phone that signs in as
    someone else must stop receiving the previous user's notifications.
    """
    stmt = insert(Device).values(
        id=new_id("device"), user_id=user_id, platform=platform, token=token, app_version=app_version
    )
    upsert: Any = stmt.on_conflict_do_update(
        constraint="uq_devices_platform_token",
        set_={
            "user_id": stmt.excluded.user_id,
            "app_version": stmt.excluded.app_version,
            "active": True,
            "deactivated_at": None,
            "deactivation_reason": None,
            "updated": func.now(),
        },
    ).returning(Device.id, literal_column("(xmax = 0)").label("inserted"))
    row = (await session.execute(upsert)).one()
    device = await session.get(Device, row.id, populate_existing=True)
    assert device is not None
    return device, bool(row.inserted)


async def count_active_devices(session: AsyncSession, user_id: str) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(Device).where(Device.user_id == user_id, Device.active)
        )
        or 0
    )


async def devices_of(session: AsyncSession, user_id: str) -> list[Device]:
    rows = await session.scalars(select(Device).where(Device.user_id == user_id).order_by(Device.created))
    return list(rows)


async def get_device(session: AsyncSession, device_id: str) -> Device | None:
    return await session.get(Device, device_id)


async def delete_device(session: AsyncSession, device: Device) -> None:
    await session.delete(device)


async def deactivate_device(session: AsyncSession, device_id: str, reason: str) -> None:
    """Stop pushing to a dead token at once: the device and every send still queued for it."""
    await session.execute(
        update(Device)
        .where(Device.id == device_id, Device.active)
        .values(active=False, deactivated_at=func.now(), deactivation_reason=reason, updated=func.now())
    )
    queued = (
        select(Delivery.id)
        .where(Delivery.device_id == device_id, Delivery.status == "pending")
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(queued))
        .values(status="dropped", last_error=f"device deactivated: {reason}")
    )


# -- account owners --------------------------------------------------------------------------------------


async def remember_owner(session: AsyncSession, account_id: str, user_id: str) -> None:
    await session.execute(
        insert(AccountOwner).values(account_id=account_id, user_id=user_id).on_conflict_do_nothing()
    )


async def owner_of(session: AsyncSession, account_id: str) -> str | None:
    return await session.scalar(select(AccountOwner.user_id).where(AccountOwner.account_id == account_id))


# -- notifications ---------------------------------------------------------------------------------------


_ENQUEUE = """
    INSERT INTO notifications.deliveries
        (push_id, notification_key, device_id, user_id, account_id, kind, title, body, data, event_time)
    SELECT gen_random_uuid(), :key, d.id, d.user_id, :account_id, :kind, :title, :body, :data, :event_time
    FROM notifications.devices d
    WHERE d.user_id = :user_id AND d.active
    ON CONFLICT ON CONSTRAINT uq_deliveries_notification_device DO NOTHING
    RETURNING 1
"""
# The same, also storing the account's owner (unless known) in the same round trip.
_ENQUEUE_AND_REMEMBER_OWNER = f"""
    WITH owner AS (
        INSERT INTO notifications.account_owners (account_id, user_id) VALUES (:account_id, :user_id)
        ON CONFLICT DO NOTHING
    )
    {_ENQUEUE}
"""
_ENQUEUE_BINDS = (bindparam("data", type_=JSONB), bindparam("event_time", type_=DateTime(timezone=True)))
_ENQUEUE_STATEMENTS = {
    False: text(_ENQUEUE).bindparams(*_ENQUEUE_BINDS),
    True: text(_ENQUEUE_AND_REMEMBER_OWNER).bindparams(*_ENQUEUE_BINDS),
}


async def enqueue(
    session: AsyncSession,
    notification_key: str,
    user_id: str,
    account_id: str | None,
    message: Message,
    event_time: datetime | None = None,
    *,
    remember_owner: bool = False,
) -> int:
    """One delivery row per active device of the user; a notification already queued for a device is
    not queued again (unique notification key + device). Returns how many rows were added.

    One statement (one round trip): the devices are read and the rows inserted by the database; with
    `remember_owner`, it also stores `account_id`'s owner as `remember_owner()` does."""
    params = {
        "key": notification_key,
        "user_id": user_id,
        "account_id": account_id,
        "kind": message.kind,
        "title": message.title,
        "body": message.body,
        "data": message.data,
        "event_time": event_time,
    }
    return len((await session.execute(_ENQUEUE_STATEMENTS[remember_owner], params)).all())


@dataclass(frozen=True)
class Claimed:
    """A due delivery locked by the claiming transaction, with what sending it needs."""

    id: int
    push_id: str
    device_id: str
    attempts: int
    title: str
    body: str
    data: dict[str, str]
    event_time: datetime | None
    platform: str
    token: str
    active: bool


_CLAIM = (
    select(
        Delivery.id,
        Delivery.push_id,
        Delivery.device_id,
        Delivery.attempts,
        Delivery.title,
        Delivery.body,
        Delivery.data,
        Delivery.event_time,
        Device.platform,
        Device.token,
        Device.active,
    )
    .join(Device, Device.id == Delivery.device_id)
    # 'pending' is a literal, not a parameter: a cached generic plan can then use the partial index
    # ix_deliveries_due (status = 'pending'); with `status = $1` it would scan the whole table.
    .where(Delivery.status == literal_column("'pending'"), Delivery.next_attempt_at <= func.now())
    .order_by(Delivery.next_attempt_at, Delivery.id)
    .limit(bindparam("limit"))
    .with_for_update(of=Delivery, skip_locked=True)
)


async def claim_due(session: AsyncSession, limit: int) -> list[Claimed]:
    """Lock up to `limit` due pending deliveries, oldest first, skipping rows another worker holds."""
    result = await (await session.connection()).execute(_CLAIM, {"limit": limit})
    return [Claimed(*row) for row in result]


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed delivery. `attempts` None: no send was attempted (the attempt count and
    last answer stay as they were). `retry_in`: still pending, due again in that many seconds."""

    id: int
    status: str  # pending | sent | failed | invalid_token | dropped
    attempts: int | None = None
    status_code: int | None = None
    error: str | None = None
    provider_id: str | None = None
    retry_in: float | None = None


_RECORD = text(
    """
    UPDATE notifications.deliveries q SET
        status = o.status,
        attempts = coalesce(o.attempts, q.attempts),
        last_status = CASE WHEN o.attempts IS NULL THEN q.last_status ELSE o.status_code END,
        last_error = o.error,
        provider_id = coalesce(o.provider_id, q.provider_id),
        sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE q.sent_at END,
        next_attempt_at = CASE WHEN o.retry_in IS NULL THEN q.next_attempt_at
                               ELSE now() + make_interval(secs => o.retry_in) END
    FROM unnest(:ids, :statuses, :attempts, :status_codes, :errors, :provider_ids, :retry_ins)
        AS o(id, status, attempts, status_code, error, provider_id, retry_in)
    WHERE q.id = o.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("statuses", type_=ARRAY(Text)),
    bindparam("attempts", type_=ARRAY(Integer)),
    bindparam("status_codes", type_=ARRAY(Integer)),
    bindparam("errors", type_=ARRAY(Text)),
    bindparam("provider_ids", type_=ARRAY(Text)),
    bindparam("retry_ins", type_=ARRAY(Float)),
)


async def record_outcomes(session: AsyncSession, outcomes: list[Outcome]) -> None:
    """Write a batch's outcomes in one statement."""
    if not outcomes:
        return
    await (await session.connection()).execute(
        _RECORD,
        {
            "ids": [o.id for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "attempts": [o.attempts for o in outcomes],
            "status_codes": [o.status_code for o in outcomes],
            "errors": [o.error for o in outcomes],
            "provider_ids": [o.provider_id for o in outcomes],
            "retry_ins": [o.retry_in for o in outcomes],
        },
    )


# -- feed items ------------------------------------------------------------------------------------------


async def add_feed_item(session: AsyncSession, **values: Any) -> FeedItem | None:
    """Store a feed item; None if one from the same event (`source_event_id`) is already stored."""
    item_id = new_id("feeditem")
    stmt = insert(FeedItem).values(id=item_id, **values)
    if values.get("source_event_id"):
        stmt = stmt.on_conflict_do_nothing(index_elements=["source_event_id"])
    inserted = await session.scalar(stmt.returning(FeedItem.id))
    if inserted is None:
        return None
    return await session.get(FeedItem, inserted)


async def feed_of(session: AsyncSession, account_id: str, limit: int) -> list[FeedItem]:
    rows = await session.scalars(
        select(FeedItem)
        .where(FeedItem.account_id == account_id)
        .order_by(FeedItem.created.desc(), FeedItem.id.desc())
        .limit(limit)
    )
    return list(rows)
