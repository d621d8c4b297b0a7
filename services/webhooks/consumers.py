"""The feed's events become deliveries: one row per active webhook of the account, written in the
consumer's transaction, beside the events' inbox rows (so an event is never lost between the two, and a
redelivered one adds nothing).

A batch of events is one statement (repository.add_deliveries); one event is a batch of one, for the
consumer's per-event fallback."""

from __future__ import annotations

from pydantic_core import to_json
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
    return to_json({"type": event_type, "data": transaction}).decode()  # compact, UTF-8, in Rust


class DeliveryHandlers:
    """The "deliveries" consumer's handlers: `on_batch` for a batch, `handlers()` for one event."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer

    async def on_batch(self, session: AsyncSession, envelopes: list[Envelope]) -> None:
        """Every event's deliveries in one statement; the worker woken once the batch commits."""
        events = []
        for envelope in envelopes:
            event = TransactionEvent.model_validate(envelope.data)
            events.append(
                repo.FeedEvent(
                    event_id=envelope.id,
                    account_id=event.account_id,
                    event_type=envelope.type,
                    event_time=envelope.time,
                    payload=body_of(envelope.type, event.transaction),
                )
            )
        # `msg_` and the id's millisecond time; the database adds the rest
        added = await repo.add_deliveries(session, id_prefix=new_id("msg")[:14], events=events)
        if added:
            after_commit(session, self.deliverer.wake.set)

    async def on_event(self, session: AsyncSession, envelope: Envelope) -> None:
        await self.on_batch(session, [envelope])

    def handlers(self) -> dict[str, Handler]:
        return {event_type: self.on_event for event_type in DELIVERED_TYPES}
