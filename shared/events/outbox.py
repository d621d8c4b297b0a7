"""The transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

from sqlalchemy.ext.asyncio import AsyncSession

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
    """One event for `Outbox.emit_many`; `cause` is the event it answers, whose trace it continues."""

    topic: str
    subject: str
    data: EventData
    cause: Envelope | None = None


@dataclass(frozen=True, slots=True)
class Staged:
    """An event built by `Outbox.stage`, for the caller's statement to insert."""

    envelope: Envelope
    row: tuple[str, str, str, str, str]  # the outbox columns, in _OUTBOX_COLUMNS order
    table: str
    span: tracing.Active | None

    def insert_sql(self, first_param: int, when: str | None = None) -> str:
        """A CTE body inserting this event from parameters $first_param… (five, `row`), only if the
        SQL condition `when` holds: `WITH change AS (…), event AS (<this>) SELECT …`."""
        return _staged_insert_sql(self.table, first_param, when)


@cache
def _staged_insert_sql(table: str, first_param: int, when: str | None) -> str:
    values = ", ".join(f"${i}::text" for i in range(first_param, first_param + len(_OUTBOX_COLUMNS)))
    return f"INSERT INTO {table} ({', '.join(_OUTBOX_COLUMNS)}) SELECT {values}" + (
        f" WHERE {when}" if when else ""
    )


class Outbox:
    def __init__(self, service: str, schema: str | None = None) -> None:
        self.service = service
        self.table = event_tables(schema or service).outbox
        self._insert = self.table.insert()  # built once, for emit_many
        self._insert_sql = (
            f"INSERT INTO {self.table.fullname} ({', '.join(_OUTBOX_COLUMNS)})"
            f" VALUES ({', '.join(f'${i}' for i in range(1, len(_OUTBOX_COLUMNS) + 1))})"
        )
        # Set after a transaction with events commits, so the relay in this process publishes at
        # once instead of at its next poll. Replicas elsewhere fall back to polling.
        self.wake = asyncio.Event()

    async def emit(self, session: Executor, topic: str, subject: str, data: EventData) -> Envelope:
        """Add an event to the caller's transaction. It is published only if that transaction commits."""
        staged = self.stage(topic, subject, data)
        try:
            await execute(session, self._insert_sql, *staged.row)
        except BaseException as exc:
            if staged.span is not None:
                staged.span.end(exc, restore=False)
            raise
        self.written(session, staged)
        return staged.envelope

    def stage(self, topic: str, subject: str, data: EventData) -> Staged:
        """An event for the caller's own statement to insert together with the change it reports
        (`Staged.insert_sql`): one round trip instead of two on a hot path. Call `written` once the
        statement has inserted it; an event never written is simply dropped."""
        span = tracing.child(f"outbox.emit {data.event_type}", kind=tracing.PRODUCER)
        envelope = Envelope.wrap(self.service, subject, data)  # its traceparent: the emit span
        if span is not None:
            span.end(restore=True, record=False)  # no longer current; recorded by `written`
        row = (envelope.id, topic, subject, envelope.type, envelope.to_json())
        return Staged(envelope, row, self.table.fullname, span)

    def written(self, session: Executor, staged: Staged) -> None:
        """The caller's transaction now holds the event: record its span, and once the transaction
        commits tell the observers and wake the relay."""
        envelope = staged.envelope
        if staged.span is not None:
            for key, value in tracing.event_attributes(
                envelope.type, envelope.id, staged.row[2], envelope.data
            ).items():
                staged.span.set(key, value)
            staged.span.set("messaging.destination.name", staged.row[1])
            staged.span.end(restore=False)
        observers = _observers.get(self.service)
        if observers:
            for observe in observers:
                after_commit(session, partial(_notify, observe, envelope))
        after_commit(session, self.wake.set)

    async def emit_many(self, session: AsyncSession, events: list[Outgoing]) -> list[Envelope]:
        """Several events in one statement (a consumer folding a batch). Each continues the trace of
        its cause, if it has one. Published only if the caller's transaction commits."""
        if not events:
            return []
        envelopes = [
            Envelope.wrap(self.service, e.subject, e.data, traceparent=_child_of(e.cause)) for e in events
        ]
        await session.execute(
            self._insert,
            [
                {"event_id": env.id, "topic": e.topic, "key": e.subject, "event_type": env.type,
                 "payload": env.to_json()}
                for e, env in zip(events, envelopes, strict=True)
            ],
        )  # fmt: skip
        observers = _observers.get(self.service)
        for envelope in envelopes if observers else ():
            for observe in observers or ():
                after_commit(session, partial(_notify, observe, envelope))
        after_commit(session, self.wake.set)
        return envelopes


def _child_of(cause: Envelope | None) -> str | None:
    parent = cause.trace_context() if cause is not None else None
    return parent.child().header if parent is not None else None
