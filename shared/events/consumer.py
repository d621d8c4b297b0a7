"""The consumer runner: at-least-once delivery made effectively-once by an inbox.

For each batch of records, one database transaction holds, per event, the
inbox row (consumer, event id) and the handler's effects. The common path
inserts the batch's inbox rows in one statement and commits once; if any
handler raises, the batch is rolled back and redone with a savepoint per event.
Redelivered events find their inbox row and are skipped.
An event whose handler keeps failing, or that cannot be decoded, is parked in
the dead-letter table with the error (its inbox row marks it done), and the
consumer moves on. Offsets are committed to the transport only after the
transaction commits; if anything below the handler fails (the database is
down), the whole batch is retried until it succeeds: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import tracing
from shared.db import Database, after_commit
from shared.events.envelope import Envelope
from shared.events.tables import event_tables
from shared.events.transports.base import IncomingRecord, Subscription, Transport
from shared.observability import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENT_LATENCY,
    EVENTS_CONSUMED,
    RECENT_DEAD_LETTERS,
    log_fields,
)

log = logging.getLogger("shared.events.consumer")

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
# Optional: all of a batch's first-time events at once (same transaction, same inbox rows), for
# consumers that can fold a batch in a few statements. If it raises, the batch is redone event by
# event with the per-event handlers, so failures are retried and dead-lettered as usual.
BatchHandler = Callable[[AsyncSession, list[Envelope]], Awaitable[None]]


class _HandlerFailed(Exception):
    """A handler raised on the fast path: redo the batch one savepoint per event."""


class Consumer:
    def __init__(
        self,
        name: str,
        *,
        service: str,
        db: Database,
        transport: Transport,
        handlers: dict[str, Handler],
        topics: Iterable[str],
        schema: str | None = None,
        max_attempts: int = 3,
        batch_size: int = 200,
        poll_seconds: float = 0.5,
        linger_seconds: float = 0.0,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.name = name
        self.service = service
        self.db = db
        self.transport = transport
        self.handlers = handlers
        self.batch_handler = batch_handler
        self.topics = sorted(set(topics))
        self.tables = event_tables(schema or service)
        # The event ids of a batch (or of one event) not seen before, recorded as seen: one constant
        # statement for any batch size. SQLAlchemy cannot cache a multi-row VALUES insert, and
        # compiled that afresh for every batch (an eighth of a consumer's CPU).
        self._record_in_inbox = text(
            f"INSERT INTO {self.tables.inbox.fullname} (consumer, event_id)"
            " SELECT :consumer, unnest(CAST(:event_ids AS text[]))"
            " ON CONFLICT DO NOTHING RETURNING event_id"
        )
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        # At most one batch per linger interval (decision 0028): records arriving soon after a batch
        # wait out the rest of the interval and are handled together; after a quiet spell a record
        # is handled at once. A full batch means a backlog, and the next one is fetched at once.
        self.linger_seconds = linger_seconds
        self.subscription: Subscription | None = None

    async def run(self) -> None:
        """Background task: poll, handle, commit, forever."""
        backoff = 0.1
        while True:
            try:
                self.subscription = await self.transport.subscribe(self.name, self.topics)
                try:
                    await self._loop(self.subscription)
                finally:
                    await self.subscription.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s lost its subscription; reconnecting", self.name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _loop(self, sub: Subscription) -> None:
        loop = asyncio.get_running_loop()
        lag_due = 0.0
        linger_until = 0.0
        while True:
            if (linger := linger_until - loop.time()) > 0:
                await self._linger(linger)
            linger_until = 0.0
            records = await sub.poll(self.batch_size, self.poll_seconds)
            if records:
                await self.handle_batch_until_done(records)
                await sub.commit(records)
                full = len(records) >= self.batch_size
                linger_until = 0.0 if full else loop.time() + self.linger_seconds
            # The lag gauge is a query: at most once a second, not once per poll.
            if (now := time.monotonic()) >= lag_due:
                lag_due = now + 1.0
                for topic, lag in (await sub.lag()).items():
                    CONSUMER_LAG.labels(self.service, self.name, topic).set(lag)

    async def _linger(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def handle_batch_until_done(self, records: list[IncomingRecord]) -> None:
        backoff = 0.1
        while True:
            try:
                await self.handle_batch(records)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s could not commit a batch; retrying", self.name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def handle_batch(self, records: list[IncomingRecord]) -> None:
        try:
            handled = await self._handle_batch_fast(records)
        except _HandlerFailed:
            handled = await self._handle_batch_carefully(records)
        now = datetime.now(UTC)
        for envelope in handled:
            EVENT_LATENCY.labels(self.service, self.name).observe((now - envelope.time).total_seconds())

    async def _handle_batch_fast(self, records: list[IncomingRecord]) -> list[Envelope]:
        """The common case: one inbox insert for the batch, every handler, one commit.

        If any handler raises, the whole transaction rolls back and the batch is redone carefully,
        with a savepoint, retries and dead-lettering per event.
        """
        handled: list[Envelope] = []
        async with self.db.transaction() as session:
            envelopes: list[Envelope] = []
            for record in records:
                try:
                    envelope = Envelope.from_json(record.value)
                except ValueError as exc:
                    await self._dead_letter(session, record, None, f"undecodable event: {exc}", attempts=1)
                    continue
                if envelope.type in self.handlers:
                    envelopes.append(envelope)
                else:
                    EVENTS_CONSUMED.labels(self.service, self.name, "ignored").inc()
            if not envelopes:
                return handled
            first_time = set(
                await session.scalars(
                    self._record_in_inbox, {"consumer": self.name, "event_ids": [e.id for e in envelopes]}
                )
            )
            fresh: list[Envelope] = []
            for envelope in envelopes:
                if envelope.id not in first_time:
                    EVENTS_CONSUMED.labels(self.service, self.name, "duplicate").inc()
                    continue
                first_time.discard(envelope.id)  # the same event twice in one batch runs once
                fresh.append(envelope)
            if self.batch_handler is not None:
                await self._run_batch_handler(session, fresh)
                handled.extend(fresh)
            for envelope in fresh if self.batch_handler is None else ():
                span = self._span(envelope)
                try:
                    await self.handlers[envelope.type](session, envelope)
                except Exception as exc:
                    if span is not None:
                        span.end(exc)
                    raise _HandlerFailed from exc
                if span is not None:
                    span.end()
                handled.append(envelope)
        EVENTS_CONSUMED.labels(self.service, self.name, "handled").inc(len(handled))
        return handled

    async def _run_batch_handler(self, session: AsyncSession, fresh: list[Envelope]) -> None:
        assert self.batch_handler is not None
        if not fresh:
            return
        spans = [span for envelope in fresh if (span := self._span(envelope)) is not None]
        try:
            await self.batch_handler(session, fresh)
        except Exception as exc:
            for span in spans:
                span.end(exc)
            raise _HandlerFailed from exc
        for span in spans:
            span.end()

    async def _handle_batch_carefully(self, records: list[IncomingRecord]) -> list[Envelope]:
        handled: list[Envelope] = []
        async with self.db.transaction() as session:
            for record in records:
                envelope = await self._handle_one(session, record)
                if envelope is not None:
                    handled.append(envelope)
        return handled

    async def _handle_one(self, session: AsyncSession, record: IncomingRecord) -> Envelope | None:
        try:
            envelope = Envelope.from_json(record.value)
        except ValueError as exc:
            await self._dead_letter(session, record, None, f"undecodable event: {exc}", attempts=1)
            return None
        handler = self.handlers.get(envelope.type)
        if handler is None:
            EVENTS_CONSUMED.labels(self.service, self.name, "ignored").inc()
            return None
        first_time = await session.scalar(
            self._record_in_inbox, {"consumer": self.name, "event_ids": [envelope.id]}
        )
        if first_time is None:
            EVENTS_CONSUMED.labels(self.service, self.name, "duplicate").inc()
            return None
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            span = self._span(envelope)
            try:
                async with session.begin_nested():
                    await handler(session, envelope)
                if span is not None:
                    span.end()
                EVENTS_CONSUMED.labels(self.service, self.name, "handled").inc()
                return envelope
            except Exception as exc:
                if span is not None:
                    span.end(exc)
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "handler failed",
                    extra=log_fields(consumer=self.name, event_id=envelope.id, attempt=attempt, error=error),
                )
                if attempt < self.max_attempts:
                    await asyncio.sleep(0.05 * attempt)
        await self._dead_letter(session, record, envelope, error, attempts=self.max_attempts)
        return None

    def _span(self, envelope: Envelope) -> tracing.Active | None:
        """The handler's span, continuing the trace the event was emitted in (its traceparent)."""
        if not tracing.enabled():
            return None
        parent = envelope.trace_context()
        if parent is None or not tracing.sampled(parent):
            return None
        return tracing.start(
            f"consume {envelope.type}",
            kind=tracing.CONSUMER,
            parent=parent,
            service=self.service,
            attributes={
                **tracing.event_attributes(envelope.type, envelope.id, envelope.subject, envelope.data),
                "messaging.consumer.group.name": self.name,
            },
        )

    async def _dead_letter(
        self,
        session: AsyncSession,
        record: IncomingRecord,
        envelope: Envelope | None,
        error: str,
        *,
        attempts: int,
    ) -> None:
        await session.execute(
            self.tables.dead_letters.insert().values(
                consumer=self.name,
                event_id=envelope.id if envelope else None,
                event_type=envelope.type if envelope else None,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                payload=record.value,
                error=error[:4000],
                attempts=attempts,
            )
        )
        DEAD_LETTERS.labels(self.service, self.name).inc()
        parked = {
            "time": datetime.now(UTC).isoformat(), "service": self.service, "consumer": self.name,
            "event_id": envelope.id if envelope else None, "event_type": envelope.type if envelope else None,
            "topic": record.topic, "offset": record.offset, "error": error[:500],
            "trace_id": (tc.trace_id if envelope and (tc := envelope.trace_context()) else None),
        }  # fmt: skip
        after_commit(session, lambda: RECENT_DEAD_LETTERS.append(parked))
        EVENTS_CONSUMED.labels(self.service, self.name, "dead_lettered").inc()
        log.error(
            "event dead-lettered",
            extra=log_fields(consumer=self.name, topic=record.topic, offset=record.offset, error=error),
        )
