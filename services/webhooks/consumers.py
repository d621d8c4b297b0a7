"""The feed's events become deliveries: one row per active webhook of the account, written in the
consumer's transaction, beside the event's inbox row (so an event is never lost between the two, and a
redelivered one adds nothing)."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncSession

from services.webhooks import repository as repo
from services.webhooks.delivery import Deliverer
from services.webhooks.events import DELIVERED_TYPES, TransactionEvent
from shared.db import after_commit
from shared.events.consumer import Handler
from shared.events.envelope import Envelope
from shared.ids import new_id


def body_of(event_type: str, transaction: dict[str, object]) -> str:
    """What the receiver gets: Mondo's webhook body."""
    return json.dumps({"type": event_type, "data": transaction}, separators=(",", ":"), ensure_ascii=False)


def transaction_handlers(deliverer: Deliverer) -> dict[str, Handler]:
    async def on_transaction(session: AsyncSession, envelope: Envelope) -> None:
        event = TransactionEvent.model_validate(envelope.data)
        added = await repo.add_deliveries(
            session,
            id_prefix=new_id("msg")[:14],  # `msg_` and the id's millisecond time; the database adds the rest
            account_id=event.account_id,
            event_id=envelope.id,
            event_type=envelope.type,
            event_time=envelope.time,
            payload=body_of(envelope.type, event.transaction),
        )
        if added:
            after_commit(session, deliverer.wake.set)

    return {event_type: on_transaction for event_type in DELIVERED_TYPES}
