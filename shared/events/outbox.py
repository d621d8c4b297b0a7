"""The transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import after_commit
from shared.events.envelope import Envelope, EventData
from shared.events.tables import event_tables


class Outbox:
    def __init__(self, service: str, schema: str | None = None) -> None:
        self.service = service
        self.table = event_tables(schema or service).outbox
        # Set after a transaction with events commits, so the relay in this process publishes at
        # once instead of at its next poll. Replicas elsewhere fall back to polling.
        self.wake = asyncio.Event()

    async def emit(self, session: AsyncSession, topic: str, subject: str, data: EventData) -> Envelope:
        """Add an event to the caller's transaction. It is published only if that transaction commits."""
        envelope = Envelope.wrap(self.service, subject, data)
        await session.execute(
            self.table.insert().values(
                event_id=envelope.id,
                topic=topic,
                key=subject,
                event_type=envelope.type,
                payload=envelope.to_json(),
            )
        )
        after_commit(session, self.wake.set)
        return envelope
