"""Cards' queries. Receives the caller's session; never commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.cards.models import Authorisation, Card, Compensation, Presentment, Reversal


async def card_for_message(
    session: AsyncSession, fingerprint: str, network_transaction_id: str
) -> tuple[Card | None, Authorisation | None]:
    """The card, row-locked (one message per card at a time: daily limits, repeats), and any
    authorisation already recorded under the message's network id: one round trip."""
    row = (
        await session.execute(
            select(Card, Authorisation)
            .outerjoin(Authorisation, Authorisation.network_transaction_id == network_transaction_id)
            .where(Card.fingerprint == fingerprint)
            .with_for_update(of=Card)
        )
    ).first()
    if row is None:
        return None, None
    return row[0], row[1]


_AUTHORISATIONS = cast(Table, Authorisation.__table__)
_INSERT_AUTHORISATION = insert(_AUTHORISATIONS)  # the table's, not the entity's: no ORM bulk machinery
_AUTHORISATION_COLUMNS = tuple(c.key for c in _AUTHORISATIONS.columns)


async def insert_authorisation(session: AsyncSession, auth: Authorisation) -> None:
    """Write a new authorisation as one INSERT from a statement built once: on the card network's
    path this is cheaper than the ORM's unit of work (decision 0018). `auth` stays transient."""
    await session.execute(_INSERT_AUTHORISATION, {key: getattr(auth, key) for key in _AUTHORISATION_COLUMNS})


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


async def spent_since(session: AsyncSession, card_id: str, since: datetime) -> int:
    """What the card's purchases and cash withdrawals since `since` stand at (after reversals)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(Authorisation.amount - Authorisation.reversed_amount), 0)).where(
            Authorisation.card_id == card_id,
            Authorisation.created >= since,
            Authorisation.status.in_(("approved", "settled")),
            func.left(Authorisation.processing_code, 2).in_(("00", "01")),
        )
    )
    return int(total or 0)


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


async def add_compensation(
    session: AsyncSession, hold_id: str, reason: str, *, after_seconds: float = 0
) -> None:
    """Make sure a release of `hold_id` is pending (again, if an earlier one finished), due now or, as a
    safety net to be cancelled if all goes well, in `after_seconds`."""
    due = func.now() + timedelta(seconds=after_seconds) if after_seconds else func.now()
    await session.execute(
        insert(Compensation)
        .values(hold_id=hold_id, reason=reason, status="pending", attempts=0, next_attempt_at=due)
        .on_conflict_do_update(
            index_elements=[Compensation.hold_id],
            set_={"status": "pending", "reason": reason, "next_attempt_at": due, "completed": None},
        )
    )


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
