"""Cards' queries. Receives the caller's transaction (a session, or the hot path's `Tx`); never commits."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.cards.models import (
    Authorisation,
    Card,
    Compensation,
    Presentment,
    Reversal,
)
from shared.db import Executor, execute, fetch_all

_CARD_COLUMNS = tuple(c.key for c in cast(Table, Card.__table__).columns)
_AUTHORISATION_COLUMNS = tuple(c.key for c in cast(Table, Authorisation.__table__).columns)
# The card path's statements: set-based SQL with `$n` parameters, a constant number per batch whatever
# its size (decision 0030), run on the hot path's plain connection or in a session.
_CARDS_BY_FINGERPRINTS = f"""
    SELECT {", ".join(_CARD_COLUMNS)} FROM cards.cards
    WHERE fingerprint = ANY($1::text[]) ORDER BY id FOR UPDATE
"""
_PRIOR_ANSWERS = f"""
    SELECT {", ".join(_AUTHORISATION_COLUMNS)} FROM cards.authorisations
    WHERE network_transaction_id = ANY($1::text[])
"""


async def cards_for_messages(on: Executor, fingerprints: Iterable[str]) -> dict[str, Card]:
    """The cards with these fingerprints, row-locked in id order (messages on one card are decided
    one batch at a time, across replicas too: daily limits), by fingerprint."""
    rows = await fetch_all(on, _CARDS_BY_FINGERPRINTS, sorted(set(fingerprints)))
    cards = (Card(**dict(zip(_CARD_COLUMNS, row, strict=True))) for row in rows)
    return {card.fingerprint: card for card in cards}


async def prior_answers(on: Executor, network_transaction_ids: Iterable[str]) -> dict[str, Authorisation]:
    """What was recorded under these network ids already, by network id."""
    rows = await fetch_all(on, _PRIOR_ANSWERS, list(set(network_transaction_ids)))
    auths = (Authorisation(**dict(zip(_AUTHORISATION_COLUMNS, row, strict=True))) for row in rows)
    return {auth.network_transaction_id: auth for auth in auths}


async def card_for_message(
    on: Executor, fingerprint: str, network_transaction_id: str
) -> tuple[Card | None, Authorisation | None]:
    """One message's card (row-locked) and any answer already recorded under its network id."""
    card = (await cards_for_messages(on, [fingerprint])).get(fingerprint)
    prior = (await prior_answers(on, [network_transaction_id])).get(network_transaction_id)
    return card, prior


_AUTHORISATIONS = cast(Table, Authorisation.__table__)
_JSON_COLUMNS = frozenset(c.key for c in _AUTHORISATIONS.columns if isinstance(c.type, JSONB))
_ARRAY_TYPES = {str: "text", int: "bigint", bool: "boolean", datetime: "timestamptz"}


def _array_type(column: str) -> str:
    """The PostgreSQL array type a column's values travel in (JSON as text, cast on the way in)."""
    return (
        "text" if column in _JSON_COLUMNS else _ARRAY_TYPES[_AUTHORISATIONS.columns[column].type.python_type]
    )


_INSERT_AUTHORISATIONS = f"""
    INSERT INTO cards.authorisations ({", ".join(_AUTHORISATION_COLUMNS)})
    SELECT {", ".join(f"{c}::jsonb" if c in _JSON_COLUMNS else c for c in _AUTHORISATION_COLUMNS)}
    FROM unnest({", ".join(f"${i}::{_array_type(c)}[]" for i, c in enumerate(_AUTHORISATION_COLUMNS, 1))})
         AS new({", ".join(_AUTHORISATION_COLUMNS)})
    ON CONFLICT (network_transaction_id) DO NOTHING
    RETURNING network_transaction_id
"""


async def insert_authorisations(on: Executor, auths: Sequence[Authorisation]) -> set[str]:
    """Write new authorisations in one statement; the network ids written. An id already taken (a
    repeat racing us, or an id the hold resolution closed: decision 0031) is skipped."""
    if not auths:
        return set()
    columns = [[_stored(key, getattr(auth, key)) for auth in auths] for key in _AUTHORISATION_COLUMNS]
    return {row[0] for row in await fetch_all(on, _INSERT_AUTHORISATIONS, *columns)}


def _stored(column: str, value: object) -> object:
    """A value as the statement takes it: JSON columns as JSON text."""
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value


VOIDED = "voided"  # the kind, status and request digest of a network id closed unrecorded
_CLOSE_UNRECORDED = """
    INSERT INTO cards.authorisations (id, network_transaction_id, kind, processing_code, amount, currency,
        status, response_code, decline_detail, merchant, stan, rrn, transmission_time, request_digest,
        response)
    SELECT 'auth_void_' || md5(nid), nid, 'voided', '', 0, 'XXX', 'voided', '91',
           'no authorisation was recorded when its hold was resolved', '{}'::jsonb, '', '', now(), 'voided',
           jsonb_build_object('mti', '0110', 'response_code', '91', 'network_transaction_id', nid)
    FROM unnest($1::text[]) AS ids(nid)
    ON CONFLICT (network_transaction_id) DO NOTHING
"""
_BACKED = """
    SELECT network_transaction_id FROM cards.authorisations
    WHERE network_transaction_id = ANY($1::text[])
      AND status = 'approved' AND hold_id = network_transaction_id
"""


async def close_unrecorded(on: Executor, network_transaction_ids: Sequence[str]) -> None:
    """Record a voided authorisation under each id not yet recorded, so none can be recorded later:
    the unique network id decides between this and a batch still in flight (decision 0031)."""
    await execute(on, _CLOSE_UNRECORDED, list(network_transaction_ids))


async def backed_holds(on: Executor, network_transaction_ids: Sequence[str]) -> set[str]:
    """The ids whose hold an approved authorisation stands behind."""
    return {row[0] for row in await fetch_all(on, _BACKED, list(network_transaction_ids))}


async def authorisation_by_network_id(
    session: AsyncSession, network_transaction_id: str, *, lock: bool = False
) -> Authorisation | None:
    query = select(Authorisation).where(Authorisation.network_transaction_id == network_transaction_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def get_card(session: AsyncSession, card_id: str, *, lock: bool = False) -> Card | None:
    query = select(Card).where(Card.id == card_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def add_card(session: AsyncSession, card: Card) -> bool:
    """Insert a new card; False (nothing written) if its fingerprint or idempotency key is taken."""
    values = {c: getattr(card, c) for c in _CARD_COLUMNS}
    inserted = await session.scalar(insert(Card).values(values).on_conflict_do_nothing().returning(Card.id))
    return inserted is not None


async def card_by_fingerprint(session: AsyncSession, fingerprint: str) -> Card | None:
    return await session.scalar(select(Card).where(Card.fingerprint == fingerprint))


async def fingerprint_taken(session: AsyncSession, fingerprint: str) -> bool:
    return await session.scalar(select(Card.id).where(Card.fingerprint == fingerprint)) is not None


async def cards_of_account(session: AsyncSession, account_id: str) -> list[Card]:
    rows = await session.scalars(
        select(Card).where(Card.account_id == account_id).order_by(Card.created.desc(), Card.id.desc())
    )
    return list(rows)


async def card_by_idempotency_key(session: AsyncSession, user_id: str, key: str) -> Card | None:
    return await session.scalar(select(Card).where(Card.user_id == user_id, Card.idempotency_key == key))


_SPENT_SINCE = """
    SELECT card_id, coalesce(sum(amount - reversed_amount), 0) FROM cards.authorisations
    WHERE card_id = ANY($1::text[]) AND created >= $2 AND status IN ('approved', 'settled')
      AND left(processing_code, 2) IN ('00', '01')
    GROUP BY card_id
"""


async def spent_since(on: Executor, card_ids: Iterable[str], since: datetime) -> dict[str, int]:
    """What each card's purchases and cash withdrawals since `since` stand at (after reversals)."""
    rows = await fetch_all(on, _SPENT_SINCE, sorted(set(card_ids)), since)
    return {row[0]: int(row[1]) for row in rows}


async def reversal(
    session: AsyncSession, network_transaction_id: str, replacement_amount: int
) -> Reversal | None:
    return await session.scalar(
        select(Reversal).where(
            Reversal.network_transaction_id == network_transaction_id,
            Reversal.replacement_amount == replacement_amount,
        )
    )


async def presentment(session: AsyncSession, presentment_id: str) -> Presentment | None:
    return await session.get(Presentment, presentment_id)


_ADD_COMPENSATION = """
    INSERT INTO cards.compensations (hold_id, reason, status, attempts, next_attempt_at)
    VALUES ($1, $2, 'pending', 0, now() + make_interval(secs => $3))
    ON CONFLICT (hold_id) DO UPDATE SET status = 'pending', reason = excluded.reason,
                                        next_attempt_at = excluded.next_attempt_at, completed = NULL
"""


async def add_compensation(on: Executor, hold_id: str, reason: str, *, after_seconds: float = 0) -> None:
    """Make sure a release of `hold_id` is pending (again, if an earlier one finished), due now or, as a
    safety net to be cancelled if all goes well, in `after_seconds`."""
    await execute(on, _ADD_COMPENSATION, hold_id, reason, float(after_seconds))


async def cancel_compensation(session: AsyncSession, hold_id: str) -> None:
    """The hold is wanted after all (its owner committed): the pending safety net is not needed."""
    await session.execute(
        update(Compensation)
        .where(Compensation.hold_id == hold_id, Compensation.status == "pending")
        .values(status="done", outcome="not_needed", completed=func.now())
    )


async def due_compensations(session: AsyncSession, now: datetime, limit: int) -> list[str]:
    rows = await session.scalars(
        select(Compensation.hold_id)
        .where(Compensation.status == "pending", Compensation.next_attempt_at <= now)
        .order_by(Compensation.next_attempt_at)
        .limit(limit)
    )
    return list(rows)


async def claim_compensation(session: AsyncSession, hold_id: str) -> Compensation | None:
    """The pending compensation, locked; None if done or another replica is working on it."""
    return await session.scalar(
        select(Compensation)
        .where(Compensation.hold_id == hold_id, Compensation.status == "pending")
        .with_for_update(skip_locked=True)
    )
