"""Reads and writes of the notifications schema. Every function takes the caller's session; none commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
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


async def enqueue(
    session: AsyncSession,
    notification_key: str,
    user_id: str,
    account_id: str | None,
    message: Message,
    event_time: datetime | None = None,
) -> int:
    """One delivery row per active device of the user; a notification already queued for a device is
    not queued again (unique notification key + device). Returns how many rows were added."""
    devices = (await session.scalars(select(Device.id).where(Device.user_id == user_id, Device.active))).all()
    if not devices:
        return 0
    rows: list[dict[str, Any]] = [
        {
            "push_id": str(uuid.uuid4()),
            "notification_key": notification_key,
            "device_id": device_id,
            "user_id": user_id,
            "account_id": account_id,
            "kind": message.kind,
            "title": message.title,
            "body": message.body,
            "data": message.data,
            "event_time": event_time,
        }
        for device_id in devices
    ]
    stmt = (
        insert(Delivery)
        .values(rows)
        .on_conflict_do_nothing(constraint="uq_deliveries_notification_device")
        .returning(Delivery.id)
    )
    return len((await session.scalars(stmt)).all())


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
