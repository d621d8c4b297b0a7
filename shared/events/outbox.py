"""The transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from shared import tracing
from shared.context import TraceContext
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
        wrapped = [self._wrap(e) for e in events]
        envelopes = [envelope for envelope, _ in wrapped]
        columns: tuple[list[str], ...] = ([], [], [], [], [])
        for e, env in zip(events, envelopes, strict=True):
            for column, value in zip(
                columns, (env.id, e.topic, e.subject, env.type, env.to_json()), strict=True
            ):
                column.append(value)
        try:
            await execute(session, self._insert_sql, *columns)
        except BaseException as exc:
            for _, span in wrapped:
                if span is not None:
                    span.end(exc, restore=False)
            raise
        for _, span in wrapped:
            if span is not None:
                span.end(restore=False)
        observers = _observers.get(self.service)
        for envelope in envelopes if observers else ():
            for observe in observers or ():
                after_commit(session, partial(_notify, observe, envelope))
        after_commit(session, self.wake.set)
        return envelopes

    def _wrap(self, e: Outgoing) -> tuple[Envelope, tracing.Active | None]:
        """The event's envelope and, unless it answers another event, its emit span (under the
        request it reports, or the caller's trace), to be recorded once the insert is done."""
        if e.cause is not None:
            return Envelope.wrap(self.service, e.subject, e.data, traceparent=_child_of(e.cause)), None
        name = f"outbox.emit {e.data.event_type}"
        parent = TraceContext.parse(e.traceparent) if e.traceparent else None
        if parent is not None:
            span = tracing.start(name, kind=tracing.PRODUCER, parent=parent)
        else:
            span = tracing.child(name, kind=tracing.PRODUCER)
        # Its traceparent: the emit span's, else the request's, else the caller's.
        envelope = Envelope.wrap(self.service, e.subject, e.data, traceparent=None if span else e.traceparent)
        if span is not None:
            for key, value in tracing.event_attributes(
                envelope.type, envelope.id, e.subject, envelope.data
            ).items():
                span.set(key, value)
            span.set("messaging.destination.name", e.topic)
            span.end(restore=True, record=False)  # no longer current; recorded once the insert is done
        return envelope, span


def _child_of(cause: Envelope | None) -> str | None:
    parent = cause.trace_context() if cause is not None else None
    return parent.child().header if parent is not None else None
