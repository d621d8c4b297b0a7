"""Answers in Mondo's shapes: `{"webhook": {"account_id", "id", "url"}}`, RFC 3339 times."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.webhooks.models import Attempt, Delivery, Webhook


def rfc3339(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def webhook_json(webhook: Webhook) -> dict[str, Any]:
    body: dict[str, Any] = {"account_id": webhook.account_id, "id": webhook.id, "url": webhook.url}
    body["status"] = webhook.status
    if webhook.disabled_reason:
        body["disabled_reason"] = webhook.disabled_reason
    return body


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "started": rfc3339(a.started_at),
        "succeeded": a.succeeded,
        "status_code": a.status_code,
        "latency_ms": a.latency_ms,
        "error": a.error,
    }


def delivery_json(d: Delivery, attempts: list[Attempt]) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event_id": d.event_id,
        "type": d.event_type,
        "status": d.status,
        "created": rfc3339(d.created),
        "delivered": rfc3339(d.delivered_at),
        "next_attempt": rfc3339(d.next_attempt_at) if d.status == "pending" else None,
        "attempts": [attempt_json(a) for a in attempts],
    }
