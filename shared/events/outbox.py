"""The transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from shared import tracing
from shared.db import Executor, after_commit, execute
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


_OUTBOX_COLUMNS = ("event_id", "topic", "key", "event_type", "payload")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event for `Outbox.emit_many`. Its trace: `cause`'s (the event it answers) if given, else
    `traceparent` (the request it reports, when a batch mixes requests), else the caller's."""

    topic: str
    subject: str
    data: EventData
    cause: Envelope | None = None
    traceparent: str | None = None


class Outbox:
    def __init__(self, service: str, schema: str | None = None) -> None:
        self.service = service
        self.table = event_tables(schema or service).outbox
        columns = ", ".join(_OUTBOX_COLUMNS)
        arrays = ", ".join(f"${i}::text[]" for i in range(1, len(_OUTBOX_COLUMNS) + 1))
        self._insert_sql = f"INSERT INTO {self.table.fullname} ({columns}) SELECT * FROM unnest({arrays})"
        # Set after a transaction with events commits, so the relay in this process publishes at
        # once instead of at its next poll. Replicas elsewhere fall back to polling.
        self.wake = asyncio.Event()

    async def emit(self, session: Executor, topic: str, subject: str, data: EventData) -> Envelope:
        """Add an event to the caller's transaction. It is published only if that transaction commits."""
        return (await self.emit_many(session, [Outgoing(topic, subject, data)]))[0]

    async def emit_many(self, session: Executor, events: Sequence[Outgoing]) -> list[Envelope]:
        """Add events to the caller's transaction in one statement, whatever their number. Published
        only if that transaction commits."""
        if not events:
            return []
        span = tracing.child(
            "outbox.emit", kind=tracing.PRODUCER, attributes={"messaging.batch.message_count": len(events)}
        )
        envelopes = [
            Envelope.wrap(self.service, e.subject, e.data, traceparent=_child_of(e.cause) or e.traceparent)
            for e in events
        ]
        columns: tuple[list[str], ...] = ([], [], [], [], [])
        for e, env in zip(events, envelopes, strict=True):
            for column, value in zip(
                columns, (env.id, e.topic, e.subject, env.type, env.to_json()), strict=True
            ):
                column.append(value)
        try:
            await execute(session, self._insert_sql, *columns)
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            raise
        if span is not None:
            span.end()
        observers = _observers.get(self.service)
        for envelope in envelopes if observers else ():
            for observe in observers or ():
                after_commit(session, partial(_notify, observe, envelope))
        after_commit(session, self.wake.set)
        return envelopes


def _child_of(cause: Envelope | None) -> str | None:
    parent = cause.trace_context() if cause is not None else None
    return parent.child().header if parent is not None else None
