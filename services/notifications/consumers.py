"""Event handlers: transactions become pushes, a disabled webhook becomes a feed item (and a push).

The handlers run in the consumer's transaction with the inbox rows (shared/events/consumer.py): the
delivery rows they queue commit together with the record that the events were handled, so an event is
never lost between "consumed" and "queued", and a redelivered event queues nothing. Deliveries are also
unique per (notification, device), so the same transaction version published twice under two event ids
still notifies once, in one batch or in two. A batch is written with one statement whatever its size
(two if a disabled webhook does not name its owner); one event is a batch of one.

The consumed shapes are this service's own models of the fields it reads (docs/events.md); anything
else in the event is ignored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifications import messages, repository
from services.notifications.observability import NOTIFICATIONS_QUEUED
from services.notifications.sender import Sender
from shared import topics
from shared.db import after_commit
from shared.events.consumer import Handler
from shared.events.envelope import Envelope
from shared.ids import new_id

TRANSACTIONS_TOPIC = topics.TRANSACTIONS_FEED
WEBHOOKS_TOPIC = topics.WEBHOOK_ENDPOINTS


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

TRANSACTION_TYPES = ("transaction.created", "transaction.updated")
WEBHOOK_DISABLED = "webhook.endpoint.disabled"


@dataclass(frozen=True, slots=True)
class _Disabled:
    """A disabled webhook, before the batch's owner lookup: `named_before` is the owner an earlier event
    of the batch named (stored by then, unless one was stored before the batch)."""

    envelope: Envelope
    event: WebhookDisabled
    named_before: str | None


class Handlers:
    """The "push" consumer's handlers: `on_batch` for a batch, `handlers()` for one event (a batch of one,
    for the consumer's per-event fallback)."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self._known_owners: set[str] = set()  # an account never changes owner: stored once is enough

    async def on_batch(self, session: AsyncSession, envelopes: list[Envelope]) -> None:
        """A batch's owners, feed items and deliveries in one statement (and one more to read stored owners
        when a disabled webhook does not name its owner), with the outcome of the events one by one:

        * an event naming an account's owner stores it unless it is stored (the first named wins; this
          process does not write an owner it has stored before);
        * a transaction event queues its push (messages.transaction_message) for every active device of
          the user, at most once per transaction version (`transaction:<id>:v<version>`);
        * a disabled webhook puts an item in the account's feed, owned by the user the event names, or
          else the account's owner as known when it is handled (stored before the batch, or named by an
          earlier event); if the owner is known it is pushed (`feed_item:<id>`).
        """
        named: dict[str, str] = {}  # account -> the first owner named in the batch
        steps: list[repository.Notification | _Disabled] = []
        for envelope in envelopes:
            if envelope.type == WEBHOOK_DISABLED:
                disabled = WebhookDisabled.model_validate(envelope.data)
                steps.append(_Disabled(envelope, disabled, named.get(disabled.account_id)))
                if disabled.user_id:
                    named.setdefault(disabled.account_id, disabled.user_id)
                continue
            event = TransactionEvent.model_validate(envelope.data)
            named.setdefault(event.account_id, event.user_id)
            message = messages.transaction_message(envelope.type, envelope.data)
            if message is not None:
                tx_id = str(event.transaction.get("id") or envelope.id)
                key = f"transaction:{tx_id}:v{event.version}"
                steps.append(
                    repository.Notification(key, event.user_id, event.account_id, message, envelope.time)
                )
        unnamed = [s.event.account_id for s in steps if isinstance(s, _Disabled) and not s.event.user_id]
        stored = await repository.owners_of(session, unnamed) if unnamed else {}

        items: list[repository.EventFeedItem] = []
        notifications: list[repository.Notification] = []
        for step in steps:
            if not isinstance(step, _Disabled):
                notifications.append(step)
                continue
            item, push = self._feed_item(step, stored.get(step.event.account_id))
            items.append(item)
            if push is not None:
                notifications.append(push)
        owners = {account: user for account, user in named.items() if account not in self._known_owners}
        queued = await repository.store(session, owners=owners, feed_items=items, notifications=notifications)
        if owners:
            if len(self._known_owners) >= KNOWN_OWNERS_MAX:
                self._known_owners.clear()
            after_commit(session, functools.partial(self._known_owners.update, owners))
        for kind, count in queued.items():
            NOTIFICATIONS_QUEUED.labels(kind).inc(count)
        if queued:
            after_commit(session, self.sender.wake)

    @staticmethod
    def _feed_item(
        step: _Disabled, stored_owner: str | None
    ) -> tuple[repository.EventFeedItem, repository.Notification | None]:
        """The disabled webhook's feed item, and its push if the account's owner is known."""
        event = step.event
        user_id = event.user_id or stored_owner or step.named_before
        message = messages.webhook_disabled_message(event.url)
        item = repository.EventFeedItem(
            id=new_id("feeditem"),
            account_id=event.account_id,
            user_id=user_id,
            title=message.title,
            body=message.body,
            source_event_id=step.envelope.id,
        )
        if user_id is None:
            return item, None  # the owner is not known yet: the item is in the feed, unpushed
        data = {"feed_item_id": item.id, "account_id": event.account_id, "webhook_id": event.webhook_id}
        pushed = messages.Message("feed_item", message.title, message.body, data)
        key, at = f"feed_item:{item.id}", step.envelope.time
        return item, repository.Notification(key, user_id, event.account_id, pushed, at, feed_item_id=item.id)

    async def on_event(self, session: AsyncSession, envelope: Envelope) -> None:
        await self.on_batch(session, [envelope])

    def handlers(self) -> dict[str, Handler]:
        return {event_type: self.on_event for event_type in (*TRANSACTION_TYPES, WEBHOOK_DISABLED)}
