"""Events webhooks produces (topic `webhooks.endpoints`, subject = account id) and the ones it reads."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from shared import topics
from shared.events.envelope import EventData

TOPIC = topics.WEBHOOK_ENDPOINTS  # ours
FEED_TOPIC = topics.TRANSACTIONS_FEED  # what we read
DELIVERED_TYPES = ("transaction.created", "transaction.updated")


class WebhookEndpointDisabled(EventData):
    """A webhook stopped receiving: its receiver answered 410 (`gone`) or kept failing (`failing`).

    The notifications service puts an item in the owner's feed."""

    event_type: ClassVar[str] = "webhook.endpoint.disabled"
    webhook_id: str
    account_id: str
    user_id: str
    url: str
    reason: str  # gone | failing
    failing_since: str | None  # RFC 3339
    disabled_at: str  # RFC 3339


class TransactionEvent(BaseModel):
    """What we read of `transaction.created` / `transaction.updated` (docs/events.md)."""

    model_config = ConfigDict(extra="ignore")
    account_id: str
    transaction: dict[str, Any]
