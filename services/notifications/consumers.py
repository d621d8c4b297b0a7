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

import functools
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


# Accounts whose owner this process has stored; forgotten wholesale past this size (a cache, not a record).
KNOWN_OWNERS_MAX = 100_000


class Handlers:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self._known_owners: set[str] = set()  # an account never changes owner: stored once is enough

    def _owner_unknown(self, account_id: str) -> bool:
        return account_id not in self._known_owners

    def _owner_stored(self, session: AsyncSession, account_id: str) -> None:
        if len(self._known_owners) >= KNOWN_OWNERS_MAX:
            self._known_owners.clear()
        after_commit(session, functools.partial(self._known_owners.add, account_id))

    async def _remember_owner(self, session: AsyncSession, account_id: str, user_id: str) -> None:
        """Store the account's owner unless this process already has (a round trip saved per event)."""
        if self._owner_unknown(account_id):
            await repository.remember_owner(session, account_id, user_id)
            self._owner_stored(session, account_id)

    async def _queue(
        self,
        session: AsyncSession,
        key: str,
        user_id: str,
        account_id: str,
        message: messages.Message,
        envelope: Envelope,
        *,
        owner_from_event: bool = False,
    ) -> None:
        """Queue the deliveries; with `owner_from_event`, the event names the account's owner: store it
        in the same statement unless this process already has."""
        remember = owner_from_event and self._owner_unknown(account_id)
        queued = await repository.enqueue(
            session, key, user_id, account_id, message, envelope.time, remember_owner=remember
        )
        if remember:
            self._owner_stored(session, account_id)
        if queued:
            NOTIFICATIONS_QUEUED.labels(message.kind).inc(queued)
            after_commit(session, self.sender.wake)

    async def transaction(self, session: AsyncSession, envelope: Envelope) -> None:
        """One statement per event: the owner (if new to this process) and the deliveries."""
        event = TransactionEvent.model_validate(envelope.data)
        message = messages.transaction_message(envelope.type, envelope.data)
        if message is None:
            await self._remember_owner(session, event.account_id, event.user_id)
            return
        tx_id = str(event.transaction.get("id") or envelope.id)
        key = f"transaction:{tx_id}:v{event.version}"
        await self._queue(
            session, key, event.user_id, event.account_id, message, envelope, owner_from_event=True
        )

    async def webhook_disabled(self, session: AsyncSession, envelope: Envelope) -> None:
        event = WebhookDisabled.model_validate(envelope.data)
        if event.user_id:
            await self._remember_owner(session, event.account_id, event.user_id)
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
