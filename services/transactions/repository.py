"""Transactions' queries. Receives the caller's session; never commits.

Each handler step is one statement (one round trip): `load_for_fold` records an event and reads all a
fold needs; `add_ledger_point` records a movement and reads the transactions it may change; `save`
writes a transaction with its merchant and spend moves and reads back what its announcement needs.
Reads for the API return the response body as PostgreSQL renders it (text), from the stored JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from services.transactions.feed import Fact, Movement
from services.transactions.merchants import MerchantProfile
from services.transactions.models import TransactionRow

S = "transactions"
ROW_COLUMNS = (
    "id", "source_key", "account_id", "user_id", "created", "updated", "kind", "item", "merchant_id",
    "category", "balance_refs", "account_balance", "balance_matched", "spend_day", "spend_amount", "notes",
    "metadata", "annotated", "version", "announced",
)  # fmt: skip
_COLUMNS = ", ".join(ROW_COLUMNS)
_T_COLUMNS = ", ".join(f"t.{c}" for c in ROW_COLUMNS)


def _rfc3339(column: str) -> str:
    """SQL for render.rfc3339: UTC, milliseconds, Z."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


def merchant_json_sql(alias: str) -> str:
    """SQL for a merchant row's full Mondo JSON (its stored doc plus created/updated)."""
    return (
        f"{alias}.doc || jsonb_build_object('created', {_rfc3339(alias + '.created')}, "
        f"'updated', {_rfc3339(alias + '.updated')})"
    )


def _row(r: Row[Any]) -> TransactionRow:
    m = r._mapping
    return TransactionRow(**{c: m[c] for c in ROW_COLUMNS})


def _utc(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


# -- the fold --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FoldInput:
    """What folding one more event into its transaction needs: the transaction's events recorded before
    it, the transaction as stored (locked), the account's owner, and the ledger movements its balance
    can come from."""

    facts: list[Fact]
    row: TransactionRow | None
    owner: str | None
    movements: list[Movement]


_LOAD_FOR_FOLD = text(f"""
WITH new_event AS (
    INSERT INTO {S}.source_events (event_id, source_key, event_type, time, data)
    VALUES (:event_id, :key, :event_type, :time, CAST(:data AS jsonb))
    ON CONFLICT DO NOTHING
    RETURNING event_id
), tx AS (
    SELECT {_COLUMNS} FROM {S}.transactions WHERE source_key = :key FOR UPDATE
), earlier AS (
    SELECT event_id, event_type, time, data FROM {S}.source_events WHERE source_key = :key
)
SELECT
    EXISTS (SELECT FROM new_event) AS recorded,
    (SELECT json_agg(json_build_array(event_id, event_type, time, data)) FROM earlier) AS facts,
    (SELECT user_id FROM {S}.owners WHERE account_id = :account_id) AS owner,
    (SELECT json_agg(json_build_array(p.time, p.event_id, p.ref, p.available)) FROM (
        SELECT time, event_id, ref, available FROM {S}.ledger_points
        WHERE account_id = :account_id
          AND ref = ANY(CAST(:refs AS text[]) || coalesce(tx.balance_refs, '{{}}'))
        UNION ALL (
            SELECT time, event_id, ref, available FROM {S}.ledger_points
            WHERE account_id = :account_id
              AND time <= least(:time, (SELECT min(time) FROM earlier))
            ORDER BY time DESC, event_id DESC LIMIT 1
        )
    ) p) AS movements,
    tx.*
FROM (VALUES (1)) AS one LEFT JOIN tx ON true
""")


async def load_for_fold(
    session: AsyncSession,
    *,
    key: str,
    event_id: str,
    event_type: str,
    time: datetime,
    data: Mapping[str, Any],
    account_id: str,
    refs: Sequence[str],
) -> FoldInput | None:
    """Record an event of a transaction and read what its fold needs, in one round trip; None if the
    event was already recorded. `refs`: the ledger references the event may add (feed.event_refs)."""
    params = {
        "event_id": event_id, "key": key, "event_type": event_type, "time": time, "data": json.dumps(data),
        "account_id": account_id, "refs": list(refs),
    }  # fmt: skip
    r = (await session.execute(_LOAD_FOR_FOLD, params)).one()
    if not r.recorded:
        return None
    facts = [Fact(f[0], f[1], _utc(f[2]), f[3]) for f in r.facts or ()]
    movements = [Movement(_utc(m[0]), m[1], m[2], int(m[3])) for m in r.movements or ()]
    return FoldInput(facts, _row(r) if r.id is not None else None, r.owner, movements)


# -- ledger movements ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Touched:
    """A transaction a new ledger movement may change, and the movements its balance came from."""

    row: TransactionRow
    owner: str | None
    movements: list[Movement]


_ADD_LEDGER_POINT = text(f"""
WITH new_point AS (
    INSERT INTO {S}.ledger_points (event_id, account_id, ref, time, available)
    VALUES (:event_id, :account_id, :ref, :time, :available)
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
SELECT {_T_COLUMNS}, (SELECT user_id FROM {S}.owners WHERE account_id = t.account_id) AS owner,
       own.time AS own_time, own.event_id AS own_event, own.ref AS own_ref,
       own.available AS own_available, prior.time AS prior_time, prior.event_id AS prior_event,
       prior.ref AS prior_ref, prior.available AS prior_available
FROM {S}.transactions t
LEFT JOIN LATERAL (
    SELECT time, event_id, ref, available FROM {S}.ledger_points
    WHERE account_id = t.account_id AND ref = ANY(t.balance_refs)
    ORDER BY time, event_id LIMIT 1
) own ON true
LEFT JOIN LATERAL (
    SELECT time, event_id, ref, available FROM {S}.ledger_points
    WHERE account_id = t.account_id AND time <= t.created
    ORDER BY time DESC, event_id DESC LIMIT 1
) prior ON true
WHERE EXISTS (SELECT FROM new_point)
  AND t.account_id = :account_id
  AND (t.balance_refs @> ARRAY[CAST(:ref AS text)] OR (NOT t.balance_matched AND t.created >= :time))
ORDER BY t.created, t.id
FOR UPDATE OF t
""")


async def add_ledger_point(
    session: AsyncSession, event_id: str, account_id: str, ref: str, time: datetime, available: int
) -> list[Touched]:
    """Record a movement; the transactions whose balance it may change (locked): those it belongs to,
    and those that borrowed an earlier movement's figure and come after it. [] if already recorded.
    Their movements are those recorded before this one (the caller adds it)."""
    params = {
        "event_id": event_id,
        "account_id": account_id,
        "ref": ref,
        "time": time,
        "available": available,
    }
    touched = []
    for r in await session.execute(_ADD_LEDGER_POINT, params):
        movements = [
            Movement(r.own_time, r.own_event, r.own_ref, int(r.own_available))
            if r.own_time is not None
            else None,
            Movement(r.prior_time, r.prior_event, r.prior_ref, int(r.prior_available))
            if r.prior_time is not None
            else None,
        ]
        touched.append(Touched(_row(r), r.owner, [m for m in movements if m is not None]))
    return touched


# -- owners ------------------------------------------------------------------------------------------------


_ADD_OWNER = text(f"""
WITH new_owner AS (
    INSERT INTO {S}.owners (account_id, user_id, currency) VALUES (:account_id, :user_id, :currency)
    ON CONFLICT DO NOTHING
)
SELECT {_COLUMNS} FROM {S}.transactions
WHERE account_id = :account_id AND NOT announced
ORDER BY created, id
FOR UPDATE
""")


async def add_owner(
    session: AsyncSession, account_id: str, user_id: str, currency: str
) -> list[TransactionRow]:
    """Record an account's owner; the account's transactions waiting for it (locked)."""
    params = {"account_id": account_id, "user_id": user_id, "currency": currency}
    return [_row(r) for r in await session.execute(_ADD_OWNER, params)]


# -- writing a transaction ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MerchantSighting:
    """A merchant as one transaction saw it: its directory entry, and the span of the transaction's
    events (the directory keeps the earliest and latest over all sightings: the same in any order)."""

    profile: MerchantProfile
    network_id: str
    raw_name: str
    doc: dict[str, Any]
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Saved:
    spend_today: int  # the account's spend on the transaction's day, after this write (may be < 0)
    merchant: dict[str, Any] | None  # the merchant's full Mondo JSON, as GET expands it


_SAVE = text(f"""
WITH m AS (
    INSERT INTO {S}.merchants AS mm (id, group_id, network_id, raw_name, name, mcc, category, emoji, logo,
                                     online, atm, address, doc, created, updated)
    SELECT * FROM (VALUES (CAST(:m_id AS text), CAST(:m_group_id AS text), CAST(:m_network_id AS text),
                           CAST(:m_raw_name AS text), CAST(:m_name AS text), CAST(:m_mcc AS varchar(4)),
                           CAST(:m_category AS text), CAST(:m_emoji AS text), CAST(:m_logo AS text),
                           CAST(:m_online AS boolean), CAST(:m_atm AS boolean), CAST(:m_address AS jsonb),
                           CAST(:m_doc AS jsonb), CAST(:m_created AS timestamptz),
                           CAST(:m_updated AS timestamptz))) AS v
    WHERE v.column1 IS NOT NULL
    ON CONFLICT (id) DO UPDATE
        SET created = least(mm.created, excluded.created), updated = greatest(mm.updated, excluded.updated)
        WHERE mm.created > excluded.created OR mm.updated < excluded.updated
    RETURNING mm.*
), s AS (
    INSERT INTO {S}.spend_days AS sd (account_id, day, currency, amount)
    SELECT CAST(:account_id AS text), u.day, CAST(:currency AS varchar(3)), u.amount
    FROM unnest(CAST(:spend_days AS date[]), CAST(:spend_amounts AS bigint[])) AS u(day, amount)
    ON CONFLICT (account_id, day) DO UPDATE SET amount = sd.amount + excluded.amount
    RETURNING sd.day, sd.amount
), t AS (
    INSERT INTO {S}.transactions ({_COLUMNS}, body)
    VALUES (:id, :source_key, :account_id, :user_id, :created, :updated, :kind, CAST(:item AS jsonb),
            :merchant_id, :category, CAST(:balance_refs AS text[]), :account_balance, :balance_matched,
            :spend_day, :spend_amount, :notes, CAST(:metadata AS jsonb), :annotated, :version, :announced,
            CAST(:body AS jsonb))
    ON CONFLICT (id) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in ROW_COLUMNS[1:])}, body = excluded.body
)
SELECT
    coalesce((SELECT amount FROM s WHERE day = :spend_day),
             (SELECT amount FROM {S}.spend_days WHERE account_id = :account_id AND day = :spend_day),
             0) AS spend_today,
    coalesce((SELECT {merchant_json_sql("m")} FROM m),
             (SELECT {merchant_json_sql("x")} FROM {S}.merchants x WHERE x.id = :merchant_id)) AS merchant
""")


async def save(
    session: AsyncSession,
    tx: TransactionRow,
    body: dict[str, Any],
    *,
    currency: str,
    merchant: MerchantSighting | None = None,
    spend_moves: Mapping[date, int] | None = None,
) -> Saved:
    """Write a transaction (insert or replace) with its rendered body, record its merchant sighting and
    move the running spend per day, in one round trip; read back what its announcement shows."""
    moves = spend_moves or {}
    params: dict[str, Any] = {c: getattr(tx, c) for c in ROW_COLUMNS}
    params.update(
        item=json.dumps(tx.item), metadata=json.dumps(tx.metadata), body=json.dumps(body), currency=currency,
        spend_days=list(moves), spend_amounts=list(moves.values()),
    )  # fmt: skip
    m = merchant
    p = m.profile if m is not None else None
    params.update(
        m_id=p and p.id, m_group_id=p and p.group_id, m_network_id=m and m.network_id,
        m_raw_name=m and m.raw_name, m_name=p and p.name, m_mcc=p and p.mcc, m_category=p and p.category,
        m_emoji=p and p.emoji, m_logo=p and p.logo, m_online=p and p.online, m_atm=p and p.atm,
        m_address=p and json.dumps(p.address), m_doc=m and json.dumps(m.doc),
        m_created=m and m.first_seen, m_updated=m and m.last_seen,
    )  # fmt: skip
    r = (await session.execute(_SAVE, params)).one()
    return Saved(int(r.spend_today), r.merchant)


# -- the API -----------------------------------------------------------------------------------------------


async def row_by_id(session: AsyncSession, tx_id: str) -> TransactionRow | None:
    """A transaction to change (locked)."""
    query = text(f"SELECT {_COLUMNS} FROM {S}.transactions WHERE id = :id FOR UPDATE")
    r = (await session.execute(query, {"id": tx_id})).first()
    return _row(r) if r is not None else None


def _item_sql(expand: bool) -> str:
    if not expand:
        return "t.body"
    return (
        f"CASE WHEN t.merchant_id IS NULL THEN t.body "
        f"ELSE t.body || jsonb_build_object('merchant', {merchant_json_sql('m')}) END"
    )


def _merchant_join(expand: bool) -> str:
    return f"LEFT JOIN {S}.merchants m ON m.id = t.merchant_id" if expand else ""


_ONE = {
    expand: text(f"""
        SELECT t.user_id, json_build_object('transaction', {_item_sql(expand)})::text AS body
        FROM {S}.transactions t {_merchant_join(expand)}
        WHERE t.id = :id
    """)
    for expand in (False, True)
}


async def one_json(session: AsyncSession, tx_id: str, *, expand: bool) -> tuple[str | None, str] | None:
    """(owner's user id, `{"transaction": …}` as JSON text), or None if there is no such transaction."""
    r = (await session.execute(_ONE[expand], {"id": tx_id})).first()
    return (r.user_id, r.body) if r is not None else None


@dataclass(frozen=True, slots=True)
class Page:
    user_id: str  # the account's owner
    anchor_found: bool  # `since` named a transaction of this account (True when no id was given)
    body: str | None  # `{"transactions": […]}` as JSON text, when the caller owns the account


# The page is cut (keyset on the (account_id, created, id) index, LIMIT) before any JSON is built.
_PAGE = {
    expand: text(f"""
        SELECT o.user_id,
               (CAST(:since_id AS text) IS NULL OR a.id IS NOT NULL) AS anchor_found,
               CASE WHEN o.user_id = :user_id
                         AND (CAST(:since_id AS text) IS NULL OR a.id IS NOT NULL) THEN (
                   SELECT json_build_object('transactions', coalesce(
                       json_agg({_item_sql(expand)} ORDER BY t.created, t.id), '[]'::json
                   ))::text
                   FROM (
                       SELECT t.created, t.id, t.merchant_id, t.body
                       FROM {S}.transactions t
                       WHERE t.account_id = :account_id
                         AND (t.created, t.id) > (
                             coalesce(a.created, CAST(:since AS timestamptz), '-infinity'), coalesce(a.id, '')
                         )
                         AND t.created < coalesce(CAST(:before AS timestamptz), 'infinity')
                       ORDER BY t.created, t.id
                       LIMIT :limit
                   ) t {_merchant_join(expand)}
               ) END AS body
        FROM {S}.owners o
        LEFT JOIN {S}.transactions a ON a.id = CAST(:since_id AS text) AND a.account_id = o.account_id
        WHERE o.account_id = :account_id
    """)
    for expand in (False, True)
}


async def page_json(
    session: AsyncSession,
    account_id: str,
    user_id: str,
    *,
    limit: int,
    since_id: str | None,
    since: datetime | None,
    before: datetime | None,
    expand: bool,
) -> Page | None:
    """One page of an account's transactions in (created, id) order, rendered by PostgreSQL: after the
    transaction `since_id` (exclusive) or from the time `since` (inclusive), before `before` (exclusive).
    None if the account is unknown; no body unless `user_id` owns it and the anchor is its own."""
    params = {
        "account_id": account_id, "user_id": user_id, "limit": limit, "since_id": since_id, "since": since,
        "before": before,
    }  # fmt: skip
    r = (await session.execute(_PAGE[expand], params)).first()
    return Page(r.user_id, r.anchor_found, r.body) if r is not None else None
