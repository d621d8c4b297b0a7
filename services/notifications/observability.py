"""Notifications' business metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PUSHES = Counter(
    "push_sends_total",
    "Push attempts by provider and outcome (sent, retry, invalid_token, failed)",
    ["platform", "outcome"],
)
PUSH_LATENCY = Histogram(
    "push_event_to_provider_seconds",
    "From the event's time (the producer's commit) to the provider accepting the push",
    ["platform"],
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60),
)
NOTIFICATIONS_QUEUED = Counter(
    "push_notifications_queued_total", "Delivery rows queued (one per device per notification)", ["kind"]
)
