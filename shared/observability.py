"""Structured JSON logs carrying the trace id, and the Prometheus metrics every service shares."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from shared.context import current_trace

_service_name = "bank"

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests served", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_PRODUCED = Counter(
    "events_produced_total", "Events published by the outbox relay", ["service", "topic"]
)
EVENTS_CONSUMED = Counter(
    "events_consumed_total", "Events handled by a consumer", ["service", "consumer", "outcome"]
)
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Outbox rows not yet published", ["service"])
CONSUMER_LAG = Gauge("consumer_lag", "Events behind the head of the log", ["service", "consumer", "topic"])
DEAD_LETTERS = Counter(
    "dead_letters_total", "Events parked in the dead-letter table", ["service", "consumer"]
)
# The last dead letters this process parked (after their transaction committed), for the ops page;
# the dead-letter tables stay the record.
RECENT_DEAD_LETTERS: deque[dict[str, Any]] = deque(maxlen=50)
EVENT_LATENCY = Histogram(
    "event_end_to_end_seconds",
    "Time from an event's creation to its handler committing",
    ["service", "consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)

# Business metrics of the event-driven services, named here so the ops page, Grafana and the
# services agree on them (each service increments its own; see docs/services/ops.md).
FEED_LAG = Histogram(
    "transactions_feed_lag_seconds",
    "From a card or ledger event's time to its transaction being in the feed (committed)",
    ["event_type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FEED_TRANSACTIONS = Counter(
    "transactions_feed_items_total", "Feed changes applied, by what happened", ["change"]
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retry (will try again), failed (gave up)",
    ["outcome"],
)
WEBHOOK_ENDPOINTS_DISABLED = Counter(
    "webhook_endpoints_disabled_total", "Webhook subscriptions disabled after failing for too long"
)
DEVICES_DEACTIVATED = Counter(
    "push_devices_deactivated_total",
    "Devices deactivated (the provider said the token is gone)",
    ["provider"],
)
# Pushes by outcome: notifications' own `push_sends_total{provider,outcome}` (outcome: sent, retry,
# invalid_token, failed); the ops page reads that name.
PUSH_SENDS_METRIC = "push_sends_total"
PUSH_OK_OUTCOMES = frozenset({"sent"})
WEBHOOK_OK_OUTCOMES = frozenset({"delivered"})


def service_name() -> str:
    return _service_name


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _service_name,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = current_trace()
        if trace is not None:
            entry["trace_id"] = trace.trace_id
            entry["span_id"] = trace.span_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO", as_json: bool = True) -> None:
    global _service_name
    _service_name = service
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_fields(**fields: Any) -> dict[str, Any]:
    """`log.info("…", extra=log_fields(account_id=…))` adds structured fields to the JSON line."""
    return {"fields": fields}


def periodic_refresh(
    what: str, refresh: Callable[[], Awaitable[None]], every_seconds: float
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background job that runs `refresh` every `every_seconds`; a failed round is logged, not fatal."""

    async def job() -> None:
        while True:
            try:
                await refresh()
            except Exception:
                logging.getLogger("shared.observability").warning("could not refresh %s", what, exc_info=True)
            await asyncio.sleep(every_seconds)

    job.__name__ = f"refresh {what}"
    return job
