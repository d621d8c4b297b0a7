"""Event handlers: transactions become pushes, a disabled webhook becomes a feed item (and a push).

Each handler runs in the consumer's transaction with the inbox row (shared/events/consumer.py): the
delivery rows it queues commit together with the record that the event was handled, so an event is
never lost between "consumed" and "queued", and a redelivered event queues nothing. Deliveries are also
unique per (notification, device), so the same transaction version published twice under two event ids
still notifies once.

The consumed shapes are this service's own models of the fields it reads (docs/events.md); anything
else in the event is ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications import messages, repository
from services.notifications.observability import NOTIFICATIONS_QUEUED
from services.notifications.sender import Sender
from shared.db import after_commit
from shared.events.consumer import Handler
from shared.events.envelope import Envelope

TRANSACTIONS_TOPIC = "transactions.feed"
WEBHOOKS_TOPIC = "webhooks.endpoints"


class TransactionEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_id: str
    user_id: str
    kind: str
    change: str = "created"
    version: int = 1
    spend_today: dict[str, Any] | None = None
    transaction: dict[str, Any]


class WebhookDisabled(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_id: str
    user_id: str | None = None
    webhook_id: str
    url: str
    disabled_at: str | None = None


class Handlers:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender

    async def _queue(
        self,
        session: AsyncSession,
        key: str,
        user_id: str,
        account_id: str,
        message: messages.Message,
        envelope: Envelope,
    ) -> None:
        queued = await repository.enqueue(session, key, user_id, account_id, message, envelope.time)
        if queued:
            NOTIFICATIONS_QUEUED.labels(message.kind).inc(queued)
            after_commit(session, self.sender.wake.set)

    async def transaction(self, session: AsyncSession, envelope: Envelope) -> None:
        event = TransactionEvent.model_validate(envelope.data)
        await repository.remember_owner(session, event.account_id, event.user_id)
        message = messages.transaction_message(envelope.type, envelope.data)
        if message is None:
            return
        tx_id = str(event.transaction.get("id") or envelope.id)
        key = f"transaction:{tx_id}:v{event.version}"
        await self._queue(session, key, event.user_id, event.account_id, message, envelope)

    async def webhook_disabled(self, session: AsyncSession, envelope: Envelope) -> None:
        event = WebhookDisabled.model_validate(envelope.data)
        if event.user_id:
            await repository.remember_owner(session, event.account_id, event.user_id)
        user_id = event.user_id or await repository.owner_of(session, event.account_id)
        message = messages.webhook_disabled_message(event.url)
        item = await repository.add_feed_item(
            session,
            account_id=event.account_id,
            user_id=user_id,
            type="basic",
            title=message.title,
            body=message.body,
            source="event",
            source_event_id=envelope.id,
        )
        if item is None or user_id is None:
            return  # already stored; or the owner is not known yet: the item is in the feed, unpushed
        data = {"feed_item_id": item.id, "account_id": event.account_id, "webhook_id": event.webhook_id}
        pushed = messages.Message("feed_item", message.title, message.body, data)
        await self._queue(session, f"feed_item:{item.id}", user_id, event.account_id, pushed, envelope)

    def handlers(self) -> dict[str, Handler]:
        return {
            "transaction.created": self.transaction,
            "transaction.updated": self.transaction,
            "webhook.endpoint.disabled": self.webhook_disabled,
        }
