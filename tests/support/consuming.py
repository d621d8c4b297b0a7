"""A service's consumer runner driven without a transport: the tests hand it batches of events as a
transport would, so the inbox, the batch handler and its per-event fallback all run for real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import Database
from shared.events.consumer import BatchHandler, Consumer, Handler
from shared.events.envelope import Envelope
from shared.events.transports.base import IncomingRecord, Transport


def record(envelope: Envelope, offset: int, topic: str) -> IncomingRecord:
    """`envelope` as a transport delivers it: on `topic`, partition 0, at `offset`."""
    return IncomingRecord(topic, 0, offset, envelope.subject, envelope.to_json().encode())


class DrivenConsumer:
    """The consumer `name` of `service`, with its `handlers` and (unless None) its `batch_handler`, on
    no transport. `consume(envelopes)` hands them over as one batch, or, without a batch handler, one
    batch per event. What the batch handler raises (making the runner redo the batch event by event)
    is kept in `failures`. `topic_of` names the topic each event came on (default: the first topic)."""

    def __init__(
        self,
        db: Database,
        name: str,
        service: str,
        handlers: dict[str, Handler],
        batch_handler: BatchHandler | None,
        topics: Sequence[str],
        topic_of: Callable[[Envelope], str] | None = None,
    ) -> None:
        self.failures: list[BaseException] = []
        self.batched = batch_handler is not None
        self.topic_of = topic_of or (lambda _: topics[0])

        async def on_batch(session: AsyncSession, envelopes: list[Envelope]) -> None:
            assert batch_handler is not None
            try:
                await batch_handler(session, envelopes)
            except Exception as exc:
                self.failures.append(exc)
                raise

        self.consumer = Consumer(
            name, service=service, db=db, transport=cast(Transport, None), handlers=handlers,
            topics=list(topics), batch_handler=on_batch if batch_handler is not None else None,
        )  # fmt: skip

    async def consume(self, envelopes: Sequence[Envelope]) -> None:
        records = [record(e, i, self.topic_of(e)) for i, e in enumerate(envelopes)]
        for batch in [records] if self.batched else [[r] for r in records]:
            await self.consumer.handle_batch(batch)


@contextmanager
def counting_statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement `db` sends while the block runs, in order."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
