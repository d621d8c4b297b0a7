"""Cards' queries. Receives the caller's transaction (a session, or the hot path's `Tx`); never commits."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from services.cards.models import (
    Authorisation,
    Card,
    CardRow,
    Compensation,
    Presentment,
    PriorAnswer,
    Reversal,
)
from shared.db import Executor, execute, fetch_row, fetch_value
from shared.events.outbox import Staged

_CARD_COLUMNS = tuple(f.name for f in fields(CardRow))
_PRIOR_COLUMNS = tuple(f.name for f in fields(PriorAnswer))
# The card path's statements: SQL with `$n` parameters, run on the hot path's plain connection
# (decision 0020) or in a session.
_CARD_FOR_MESSAGE = f"""
    SELECT {", ".join(f"c.{c}" for c in _CARD_COLUMNS)}, {", ".join(f"a.{c}" for c in _PRIOR_COLUMNS)}
    FROM cards.cards c LEFT JOIN cards.authorisations a ON a.network_transaction_id = $2
    WHERE c.fingerprint = $1
    FOR UPDATE OF c
"""
_PRIOR_ANSWER = (
    f"SELECT {', '.join(_PRIOR_COLUMNS)} FROM cards.authorisations WHERE network_transaction_id = $1"
)


async def card_for_message(
    on: Executor, fingerprint: str, network_transaction_id: str
) -> tuple[CardRow | None, PriorAnswer | None]:
    """The card, row-locked (one message per card at a time: daily limits, repeats), and any
    authorisation already recorded under the message's network id: one round trip."""
    row = await fetch_row(on, _CARD_FOR_MESSAGE, fingerprint, network_transaction_id)
    if row is None:
        return None, None
    n = len(_CARD_COLUMNS)
    prior = PriorAnswer(*row[n:]) if row[n] is not None else None
    return CardRow(*row[:n]), prior


async def prior_answer(on: Executor, network_transaction_id: str) -> PriorAnswer | None:
    row = await fetch_row(on, _PRIOR_ANSWER, network_transaction_id)
    return None if row is None else PriorAnswer(*row)


_AUTHORISATIONS = cast(Table, Authorisation.__table__)
_AUTHORISATION_COLUMNS = tuple(c.key for c in _AUTHORISATIONS.columns)
_JSON_COLUMNS = frozenset(c.key for c in _AUTHORISATIONS.columns if isinstance(c.type, JSONB))
_INSERT_AUTHORISATION = (
    f"INSERT INTO cards.authorisations ({', '.join(_AUTHORISATION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_AUTHORISATION_COLUMNS) + 1))})"
)


async def insert_authorisation(on: Executor, auth: Authorisation, event: Staged | None = None) -> None:
    """Write a new authorisation, and its staged event if given, as one statement: on the card
    network's path this is cheaper than the ORM's unit of work and than a second round trip
    (decisions 0018, 0020, 0025). `auth` stays transient."""
    args = [_stored(key, getattr(auth, key)) for key in _AUTHORISATION_COLUMNS]
    if event is None:
        await execute(on, _INSERT_AUTHORISATION, *args)
        return
    add_event = event.insert_sql(len(args) + 1)
    sql = f"WITH authorisation AS ({_INSERT_AUTHORISATION}), event AS ({add_event}) SELECT 1"
    await execute(on, sql, *args, *event.row)


def _stored(column: str, value: object) -> object:
    """A value as the statement takes it: JSON columns as JSON text (both connection kinds' codecs)."""
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value


async def authorisation_by_network_id(
    session: AsyncSession, network_transaction_id: str, *, lock: bool = False
) -> Authorisation | None:
    query = select(Authorisation).where(Authorisation.network_transaction_id == network_transaction_id)
    return await session.scalar(query.with_for_update() if lock else query)


async def get_card(session: AsyncSession, card_id: str, *, lock: bool = False) -> Card | None:
    query = select(Card).where(Card.id == card_id)
    return await session.scalar(query.with_for_update() if lock else query)


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
    SELECT coalesce(sum(amount - reversed_amount), 0) FROM cards.authorisations
    WHERE card_id = $1 AND created >= $2 AND status IN ('approved', 'settled')
      AND left(processing_code, 2) IN ('00', '01')
"""


async def spent_since(on: Executor, card_id: str, since: datetime) -> int:
    """What the card's purchases and cash withdrawals since `since` stand at (after reversals)."""
    return int(await fetch_value(on, _SPENT_SINCE, card_id, since) or 0)


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
