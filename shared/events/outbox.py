"""The transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from shared import tracing
from shared.db import after_commit
from shared.events.envelope import Envelope, EventData
from shared.events.tables import event_tables

log = logging.getLogger("shared.events.outbox")


# In-band business monitoring: callbacks that see every event a service emits, once its transaction
# commits (never for rolled-back work). A service's observability module registers them.
EventObserver = Callable[[Envelope], None]
_observers: dict[str, list[EventObserver]] = {}


def observe_events(service: str, observer: EventObserver) -> None:
    """Call `observer(envelope)` after each committed event `service` emits (e.g. to count it)."""
    if observer not in _observers.setdefault(service, []):
        _observers[service].append(observer)


def _notify(observer: EventObserver, envelope: Envelope) -> None:
    try:
        observer(envelope)
    except Exception:  # a metric must never fail a committed request
        log.exception("event observer failed", extra={"fields": {"event_type": envelope.type}})


class Outbox:
    def __init__(self, service: str, schema: str | None = None) -> None:
        self.service = service
        self.table = event_tables(schema or service).outbox
        # Set after a transaction with events commits, so the relay in this process publishes at
        # once instead of at its next poll. Replicas elsewhere fall back to polling.
        self.wake = asyncio.Event()

    async def emit(self, session: AsyncSession, topic: str, subject: str, data: EventData) -> Envelope:
        """Add an event to the caller's transaction. It is published only if that transaction commits."""
        span = tracing.child(f"outbox.emit {data.event_type}", kind=tracing.PRODUCER)
        try:
            envelope = Envelope.wrap(self.service, subject, data)  # its traceparent: the emit span
            await session.execute(
                self.table.insert().values(
                    event_id=envelope.id,
                    topic=topic,
                    key=subject,
                    event_type=envelope.type,
                    payload=envelope.to_json(),
                )
            )
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            raise
        if span is not None:
            for key, value in tracing.event_attributes(
                envelope.type, envelope.id, subject, envelope.data
            ).items():
                span.set(key, value)
            span.set("messaging.destination.name", topic)
            span.end()
        observers = _observers.get(self.service)
        if observers:
            for observe in observers:
                after_commit(session, partial(_notify, observe, envelope))
        after_commit(session, self.wake.set)
        return envelope
