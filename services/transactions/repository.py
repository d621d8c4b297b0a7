"""Transactions' queries. Receives the caller's session; never commits.

A batch of events is two statements (two round trips) whatever its size: `load_batch` records the
events, movements and owners and reads every transaction they may change; `save_batch` writes the
changed transactions with their merchants and spend moves and reads back what their announcements
need. Reads for the API return the response body as PostgreSQL renders it (text), from the stored JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pydantic_core import to_json
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
    "metadata", "annotated", "version", "announced", "attachments", "receipts",
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


# -- a batch at once (the consumer's batch handler) ------------------------------------------------------


def _dumps(value: object) -> str:
    """JSON for a batch's parameters (dates and times in ISO 8601), by pydantic's serializer: three
    times json.dumps's speed, on every event the feed folds."""
    return to_json(value).decode()


@dataclass(frozen=True, slots=True)
class BatchTarget:
    """One transaction a batch may change: its stored row (locked; None if new), its recorded events if
    the batch brings events of it (`in_batch`; the batch's own are not among them), the account's owner
    as stored before the batch, and the ledger movements stored before the batch that its balance can
    come from (the batch's own are added by the caller)."""

    key: str
    in_batch: bool
    row: TransactionRow | None
    owner: str | None
    facts: list[Fact]
    movements: list[Movement]


_ROW_COLUMNS_BUT_ACCOUNT = [c for c in ROW_COLUMNS if c != "account_id"]

_LOAD_BATCH = text(f"""
WITH ev AS (
    SELECT * FROM jsonb_to_recordset(CAST(:events AS jsonb))
        AS e(event_id text, source_key text, event_type text, time timestamptz, data jsonb)
), new_events AS (
    INSERT INTO {S}.source_events (event_id, source_key, event_type, time, data)
    SELECT event_id, source_key, event_type, time, data FROM ev
    ON CONFLICT DO NOTHING
), pt AS (
    SELECT * FROM jsonb_to_recordset(CAST(:points AS jsonb))
        AS p(event_id text, account_id text, ref text, time timestamptz, available bigint)
), new_points AS (
    INSERT INTO {S}.ledger_points (event_id, account_id, ref, time, available)
    SELECT event_id, account_id, ref, time, available FROM pt
    ON CONFLICT DO NOTHING
), ow AS (
    SELECT * FROM jsonb_to_recordset(CAST(:owners AS jsonb))
        AS o(account_id text, user_id text, currency text)
), new_owners AS (
    INSERT INTO {S}.owners (account_id, user_id, currency)
    SELECT account_id, user_id, currency FROM ow
    ON CONFLICT DO NOTHING
), ks AS (
    SELECT * FROM jsonb_to_recordset(CAST(:keys AS jsonb))
        AS k(key text, account_id text, refs text[], min_time timestamptz)
), candidates AS (
    -- One index probe per batch row, each lookup LATERAL and fenced with OFFSET 0: joined as sets,
    -- the planner (which guesses a hundred rows for a recordset) hashes the batch and reads every
    -- transaction the bank has. A reference is looked up by its row in transaction_refs, not among
    -- the account's transactions, whose number grows with its history (decision 0048).
    SELECT c.id FROM ks CROSS JOIN LATERAL (
        SELECT t.id FROM {S}.transactions t WHERE t.source_key = ks.key OFFSET 0
    ) c
    UNION
    SELECT c.transaction_id FROM pt CROSS JOIN LATERAL (
        SELECT r.transaction_id FROM {S}.transaction_refs r
        WHERE r.account_id = pt.account_id AND r.ref = pt.ref OFFSET 0
    ) c
    UNION
    SELECT c.id FROM pt CROSS JOIN LATERAL (
        SELECT t.id FROM {S}.transactions t
        WHERE t.account_id = pt.account_id AND t.created >= pt.time AND NOT t.balance_matched OFFSET 0
    ) c
    UNION
    SELECT c.id FROM ow CROSS JOIN LATERAL (
        SELECT t.id FROM {S}.transactions t WHERE t.account_id = ow.account_id AND NOT t.announced OFFSET 0
    ) c
), locked AS (
    -- Locked in id order, whatever the batch: two replicas never wait for each other in a cycle. One
    -- primary-key probe per candidate: as one `id = ANY(...)`, a plan made while the table was small
    -- reads the whole table for every batch (decision 0048).
    SELECT l.* FROM (SELECT id FROM candidates ORDER BY id) c CROSS JOIN LATERAL (
        SELECT {_COLUMNS} FROM {S}.transactions t WHERE t.id = c.id FOR UPDATE
    ) l
), tg AS (
    SELECT coalesce(l.source_key, ks.key) AS key, ks.key IS NOT NULL AS in_batch,
           coalesce(l.account_id, ks.account_id) AS account_id,
           coalesce(ks.refs, '{{}}') || coalesce(l.balance_refs, '{{}}') AS refs,
           least(ks.min_time, l.created) AS bound,
           {", ".join(f"l.{c}" for c in _ROW_COLUMNS_BUT_ACCOUNT)}
    FROM locked l FULL JOIN ks ON ks.key = l.source_key
)
SELECT tg.*,
    (SELECT user_id FROM {S}.owners WHERE account_id = tg.account_id) AS owner,
    f.facts,
    (SELECT json_agg(json_build_array(p.time, p.event_id, p.ref, p.available)) FROM (
        SELECT time, event_id, ref, available FROM {S}.ledger_points
        WHERE account_id = tg.account_id AND ref = ANY(tg.refs)
        UNION ALL (
            SELECT time, event_id, ref, available FROM {S}.ledger_points
            WHERE account_id = tg.account_id AND time <= least(tg.bound, f.first)
            ORDER BY time DESC, event_id DESC LIMIT 1
        )
    ) p) AS movements
FROM tg
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_array(event_id, event_type, time, data)) AS facts, min(time) AS first
    FROM {S}.source_events WHERE tg.in_batch AND source_key = tg.key
) f ON true
ORDER BY tg.key
""")


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """A feed event of the batch, to record under its transaction's source key."""

    event_id: str
    key: str
    type: str
    time: datetime
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BatchKey:
    """A transaction the batch brings events of: the ledger references those events may add and the
    earliest of their times."""

    key: str
    account_id: str
    refs: list[str]
    min_time: datetime


async def load_batch(
    session: AsyncSession,
    *,
    events: Sequence[BatchEvent],
    points: Sequence[tuple[str, str, str, datetime, int]],  # (event_id, account_id, ref, time, available)
    owners: Sequence[tuple[str, str, str]],  # (account_id, user_id, currency)
    keys: Sequence[BatchKey],
) -> list[BatchTarget]:
    """Record a batch's feed events, ledger movements and owners, and read (locked) every transaction
    they may change with what its fold needs, in one round trip. What is read is the database as it was
    before the batch: the caller adds the batch's own events, movements and owners."""
    params = {
        "events": _dumps([
            {"event_id": e.event_id, "source_key": e.key, "event_type": e.type, "time": e.time,
             "data": e.data}
            for e in events
        ]),
        "points": _dumps([
            {"event_id": p[0], "account_id": p[1], "ref": p[2], "time": p[3], "available": p[4]}
            for p in points
        ]),
        "owners": _dumps([{"account_id": o[0], "user_id": o[1], "currency": o[2]} for o in owners]),
        "keys": _dumps([
            {"key": k.key, "account_id": k.account_id, "refs": k.refs, "min_time": k.min_time} for k in keys
        ]),
    }  # fmt: skip
    targets = []
    for r in await session.execute(_LOAD_BATCH, params):
        facts = [Fact(f[0], f[1], _utc(f[2]), f[3]) for f in r.facts or ()]
        movements = [Movement(_utc(m[0]), m[1], m[2], int(m[3])) for m in r.movements or ()]
        row = _row(r) if r.id is not None else None
        targets.append(BatchTarget(r.key, r.in_batch, row, r.owner, facts, movements))
    return targets


_SAVE_BATCH = text(f"""
WITH mv AS (
    SELECT * FROM jsonb_to_recordset(CAST(:merchants AS jsonb))
        AS v(id text, group_id text, network_id text, raw_name text, name text, mcc varchar(4),
             category text, emoji text, logo text, online boolean, atm boolean, address jsonb, doc jsonb,
             created timestamptz, updated timestamptz)
), m AS (
    INSERT INTO {S}.merchants AS mm (id, group_id, network_id, raw_name, name, mcc, category, emoji, logo,
                                     online, atm, address, doc, created, updated)
    SELECT * FROM mv ORDER BY id
    ON CONFLICT (id) DO UPDATE
        SET created = least(mm.created, excluded.created), updated = greatest(mm.updated, excluded.updated)
        WHERE mm.created > excluded.created OR mm.updated < excluded.updated
    RETURNING mm.id, {merchant_json_sql("mm")} AS doc
), sv AS (
    SELECT * FROM jsonb_to_recordset(CAST(:spend AS jsonb))
        AS v(account_id text, day date, currency varchar(3), amount bigint)
), s AS (
    INSERT INTO {S}.spend_days AS sd (account_id, day, currency, amount)
    SELECT account_id, day, currency, amount FROM sv ORDER BY account_id, day
    ON CONFLICT (account_id, day) DO UPDATE SET amount = sd.amount + excluded.amount
    RETURNING sd.account_id, sd.day, sd.amount
), tv AS (
    SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
        AS v(id text, source_key text, account_id text, user_id text, created timestamptz,
             updated timestamptz, kind text, item jsonb, merchant_id text, category text, balance_refs text[],
             account_balance bigint, balance_matched boolean, spend_day date, spend_amount bigint, notes text,
             metadata jsonb, annotated timestamptz, version integer, announced boolean, attachments jsonb,
             receipts jsonb, body jsonb)
), t AS (
    INSERT INTO {S}.transactions ({_COLUMNS}, body)
    SELECT {_COLUMNS}, body FROM tv ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in ROW_COLUMNS[1:])}, body = excluded.body
), r AS (
    -- A transaction's references only grow as its events arrive: rows are added, never removed.
    INSERT INTO {S}.transaction_refs (account_id, ref, transaction_id)
    SELECT DISTINCT tv.account_id, ref, tv.id FROM tv CROSS JOIN unnest(tv.balance_refs) AS ref
    ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
)
SELECT
    (SELECT json_agg(json_build_array(w.account_id, w.day, coalesce(s.amount, sd.amount, 0)))
     FROM jsonb_to_recordset(CAST(:want_spend AS jsonb)) AS w(account_id text, day date)
     LEFT JOIN s ON s.account_id = w.account_id AND s.day = w.day
     LEFT JOIN {S}.spend_days sd ON sd.account_id = w.account_id AND sd.day = w.day) AS spend,
    (SELECT json_object_agg(w.id, coalesce(m.doc, {merchant_json_sql("x")}))
     FROM unnest(CAST(:want_merchants AS text[])) AS w(id)
     LEFT JOIN m ON m.id = w.id
     LEFT JOIN {S}.merchants x ON x.id = w.id) AS merchants
""")


@dataclass(frozen=True, slots=True)
class SavedBatch:
    spend: dict[tuple[str, date], int]  # (account, day) -> the running spend after the batch
    merchants: dict[str, dict[str, Any]]  # merchant id -> its full Mondo JSON


async def save_batch(
    session: AsyncSession,
    rows: Sequence[tuple[TransactionRow, dict[str, Any]]],
    *,
    merchants: Sequence[MerchantSighting],
    spend_moves: Mapping[tuple[str, date], tuple[str, int]],  # (account, day) -> (currency, net move)
    want_spend: Sequence[tuple[str, date]],
    want_merchants: Sequence[str],
) -> SavedBatch:
    """Write a batch's transactions (insert or replace, with their rendered bodies), merchant sightings
    (one per merchant) and net spend moves (one per account and day), in one round trip; read back the
    spend figures and merchants the announcements show."""
    row_docs = []
    for tx, body in sorted(rows, key=lambda r: r[0].id):
        doc: dict[str, Any] = {c: getattr(tx, c) for c in ROW_COLUMNS}
        doc["body"] = body
        row_docs.append(doc)
    merchant_docs = [
        {"id": m.profile.id, "group_id": m.profile.group_id, "network_id": m.network_id,
         "raw_name": m.raw_name, "name": m.profile.name, "mcc": m.profile.mcc, "category": m.profile.category,
         "emoji": m.profile.emoji, "logo": m.profile.logo, "online": m.profile.online, "atm": m.profile.atm,
         "address": m.profile.address, "doc": m.doc, "created": m.first_seen, "updated": m.last_seen}
        for m in merchants
    ]  # fmt: skip
    spend_docs = [
        {"account_id": a, "day": d, "currency": cur, "amount": amount}
        for (a, d), (cur, amount) in sorted(spend_moves.items())
        if amount
    ]
    params = {
        "rows": _dumps(row_docs), "merchants": _dumps(merchant_docs), "spend": _dumps(spend_docs),
        "want_spend": _dumps([{"account_id": a, "day": d} for a, d in want_spend]),
        "want_merchants": list(want_merchants),
    }  # fmt: skip
    r = (await session.execute(_SAVE_BATCH, params)).one()
    spend = {(s[0], date.fromisoformat(s[1])): int(s[2]) for s in r.spend or ()}
    return SavedBatch(spend, dict(r.merchants or {}))
