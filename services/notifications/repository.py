"""Reads and writes of the notifications schema. Every function takes the caller's session; none commits.

The send path's statements (`claim_due`, `record_outcomes`, `deactivate_devices`) are SQL with `$n`
parameters that run in a plain asyncpg transaction (`Database.fast_transaction`, decision 0020) or in a
session alike. The sender runs them in every batch: through a session a batch's fixed cost was about
1.8 ms of CPU, on plain asyncpg about 0.7 ms (at 5 pushes a batch, 0.55 -> 0.33 ms per push).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Text,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications.messages import Message
from services.notifications.models import AccountOwner, Device, FeedItem
from shared.db import Executor, execute, fetch_all
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


_DEACTIVATE = """
    WITH dead AS (
        SELECT * FROM unnest($1::text[], $2::text[]) AS t(device_id, reason)
    ), devices AS (
        UPDATE notifications.devices d
        SET active = false, deactivated_at = now(), deactivation_reason = dead.reason, updated = now()
        FROM dead WHERE d.id = dead.device_id AND d.active
    )
    UPDATE notifications.deliveries q
    SET status = 'dropped', last_error = 'device deactivated: ' || dead.reason
    FROM dead
    WHERE q.device_id = dead.device_id AND q.id IN (
        SELECT id FROM notifications.deliveries
        WHERE device_id = ANY($1::text[]) AND status = 'pending'
        FOR UPDATE SKIP LOCKED
    )
"""


async def deactivate_devices(on: Executor, reasons: Mapping[str, str]) -> None:
    """Stop pushing to dead tokens at once (device id -> the provider's reason): the devices and every
    send still queued for them, in one statement."""
    if reasons:
        await execute(on, _DEACTIVATE, list(reasons), list(reasons.values()))


async def deactivate_device(on: Executor, device_id: str, reason: str) -> None:
    await deactivate_devices(on, {device_id: reason})


# -- account owners --------------------------------------------------------------------------------------


async def remember_owner(session: AsyncSession, account_id: str, user_id: str) -> None:
    await session.execute(
        insert(AccountOwner).values(account_id=account_id, user_id=user_id).on_conflict_do_nothing()
    )


async def owner_of(session: AsyncSession, account_id: str) -> str | None:
    return await session.scalar(select(AccountOwner.user_id).where(AccountOwner.account_id == account_id))


_OWNERS_OF = select(AccountOwner.account_id, AccountOwner.user_id).where(
    AccountOwner.account_id == any_(bindparam("account_ids", type_=ARRAY(Text)))
)


async def owners_of(session: AsyncSession, account_ids: Collection[str]) -> dict[str, str]:
    """The stored owners of these accounts (those known), in one statement."""
    if not account_ids:
        return {}
    rows = await session.execute(_OWNERS_OF, {"account_ids": sorted(set(account_ids))})
    return {account_id: user_id for account_id, user_id in rows}


# -- notifications ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """A notification to queue: one delivery per active device of `user_id`. With `feed_item_id`, only if
    that feed item is stored by the same statement (`store`): an item already stored was pushed then."""

    key: str
    user_id: str
    account_id: str | None
    message: Message
    event_time: datetime | None = None
    feed_item_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventFeedItem:
    """A feed item an event puts in the account's feed (type `basic`, source `event`)."""

    id: str
    account_id: str
    user_id: str | None
    title: str
    body: str
    source_event_id: str


# Any number of owners, feed items and notifications in one statement (one round trip): the owners not
# stored yet; the feed items not stored yet (one per event); and per notification, a delivery per active
# device of the user (read by the database), in notification order, unless that device already has one
# for the notification (unique notification key + device: the first of two in one statement is kept).
_STORE = text(
    """
    WITH owners AS (
        INSERT INTO notifications.account_owners (account_id, user_id)
        SELECT * FROM unnest(CAST(:owner_accounts AS text[]), CAST(:owner_users AS text[])) AS o(a, u)
        ORDER BY a  -- one order for every writer: two never wait for each other in a cycle
        ON CONFLICT DO NOTHING
    ), items AS (
        INSERT INTO notifications.feed_items
            (id, account_id, user_id, type, title, body, source, source_event_id)
        SELECT i.id, i.account_id, i.user_id, 'basic', i.title, i.body, 'event', i.source_event_id
        FROM unnest(CAST(:item_ids AS text[]), CAST(:item_accounts AS text[]), CAST(:item_users AS text[]),
                    CAST(:item_titles AS text[]), CAST(:item_bodies AS text[]), CAST(:item_events AS text[]))
             AS i(id, account_id, user_id, title, body, source_event_id)
        ON CONFLICT (source_event_id) DO NOTHING
        RETURNING id
    )
    INSERT INTO notifications.deliveries
        (push_id, notification_key, device_id, user_id, account_id, kind, title, body, data, event_time)
    SELECT gen_random_uuid(), n.key, d.id, d.user_id, n.account_id, n.kind, n.title, n.body,
           CAST(n.data AS jsonb), n.event_time
    FROM unnest(CAST(:keys AS text[]), CAST(:users AS text[]), CAST(:accounts AS text[]),
                CAST(:kinds AS text[]), CAST(:titles AS text[]), CAST(:bodies AS text[]),
                CAST(:data AS text[]), CAST(:event_times AS timestamptz[]), CAST(:feed_items AS text[]))
         WITH ORDINALITY AS n(key, user_id, account_id, kind, title, body, data, event_time, feed_item_id, i)
    JOIN notifications.devices d ON d.user_id = n.user_id AND d.active
    WHERE n.feed_item_id IS NULL OR n.feed_item_id IN (SELECT id FROM items)
    ORDER BY n.i, d.created, d.id
    ON CONFLICT ON CONSTRAINT uq_deliveries_notification_device DO NOTHING
    RETURNING kind
"""
)


async def store(
    session: AsyncSession,
    *,
    owners: Mapping[str, str] | None = None,
    feed_items: Sequence[EventFeedItem] = (),
    notifications: Sequence[Notification] = (),
) -> Counter[str]:
    """Store account owners (account -> user; an owner already stored is kept), feed items from events
    (one already stored from the same event is not stored again, nor its notification queued) and queue
    the notifications, in one statement. Returns how many deliveries were queued, by kind."""
    owners = owners or {}
    if not (owners or feed_items or notifications):
        return Counter()
    params = {
        "owner_accounts": list(owners),
        "owner_users": list(owners.values()),
        "item_ids": [i.id for i in feed_items],
        "item_accounts": [i.account_id for i in feed_items],
        "item_users": [i.user_id for i in feed_items],
        "item_titles": [i.title for i in feed_items],
        "item_bodies": [i.body for i in feed_items],
        "item_events": [i.source_event_id for i in feed_items],
        "keys": [n.key for n in notifications],
        "users": [n.user_id for n in notifications],
        "accounts": [n.account_id for n in notifications],
        "kinds": [n.message.kind for n in notifications],
        "titles": [n.message.title for n in notifications],
        "bodies": [n.message.body for n in notifications],
        "data": [json.dumps(n.message.data) for n in notifications],
        "event_times": [n.event_time for n in notifications],
        "feed_items": [n.feed_item_id for n in notifications],
    }
    return Counter(kind for (kind,) in await session.execute(_STORE, params))


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
    notification = Notification(notification_key, user_id, account_id, message, event_time)
    return sum((await store(session, notifications=[notification])).values())


@dataclass(frozen=True, slots=True)
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


# 'pending' is a literal, not a parameter: a cached generic plan can then use the partial index
# ix_deliveries_due (status = 'pending'); with `status = $1` it would scan the whole table.
_CLAIM = """
    SELECT q.id, q.push_id::text, q.device_id, q.attempts, q.title, q.body, q.data, q.event_time,
           d.platform, d.token, d.active
    FROM notifications.deliveries q JOIN notifications.devices d ON d.id = q.device_id
    WHERE q.status = 'pending' AND q.next_attempt_at <= now()
    ORDER BY q.next_attempt_at, q.id
    LIMIT $1
    FOR UPDATE OF q SKIP LOCKED
"""


async def claim_due(on: Executor, limit: int) -> list[Claimed]:
    """Lock up to `limit` due pending deliveries, oldest first, skipping rows another worker holds."""
    return [Claimed(*row) for row in await fetch_all(on, _CLAIM, limit)]


@dataclass(frozen=True, slots=True)
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


_RECORD = """
    UPDATE notifications.deliveries q SET
        status = o.status,
        attempts = coalesce(o.attempts, q.attempts),
        last_status = CASE WHEN o.attempts IS NULL THEN q.last_status ELSE o.status_code END,
        last_error = o.error,
        provider_id = coalesce(o.provider_id, q.provider_id),
        sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE q.sent_at END,
        next_attempt_at = CASE WHEN o.retry_in IS NULL THEN q.next_attempt_at
                               ELSE now() + make_interval(secs => o.retry_in) END
    FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::float8[])
        AS o(id, status, attempts, status_code, error, provider_id, retry_in)
    WHERE q.id = o.id
"""


async def record_outcomes(on: Executor, outcomes: list[Outcome]) -> None:
    """Write a batch's outcomes in one statement."""
    if not outcomes:
        return
    await execute(
        on,
        _RECORD,
        [o.id for o in outcomes],
        [o.status for o in outcomes],
        [o.attempts for o in outcomes],
        [o.status_code for o in outcomes],
        [o.error for o in outcomes],
        [o.provider_id for o in outcomes],
        [o.retry_in for o in outcomes],
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
