"""The outbox relay: publishes a service's committed events in order and marks them sent.

One relay per service is active at a time (a PostgreSQL advisory lock elects
it), which is what keeps the publish order equal to the commit order of each
account's events. A crash between publishing and marking re-publishes the
batch on restart: consumers' inboxes make that harmless, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import tracing
from shared.db import Database
from shared.events.outbox import Outbox
from shared.events.transports.base import OutgoingRecord, Transport
from shared.observability import EVENTS_PRODUCED, OUTBOX_BACKLOG

log = logging.getLogger("shared.events.relay")

RETENTION = "7 days"  # published rows kept this long for inspection, then deleted


# The mark's transaction reads the unpublished rows through their partial index, never a bitmap or
# sequential scan (decision 0029). Every published row leaves a dead entry in that index until a
# vacuum, and the outbox keeps published rows for RETENTION, so autovacuum comes rarely. Only an
# index scan marks those entries dead for later scans; a bitmap scan visits each one's heap page
# every time, and the relay slowed with every event since the last vacuum.
_INDEX_SCAN_ONLY = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off"


class Relay:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        transport: Transport,
        *,
        batch_size: int = 500,
        poll_seconds: float = 0.5,
        linger_seconds: float = 0.0,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.transport = transport
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        # At most one publish per linger interval: a relay woken soon after its last batch waits out
        # the rest of the interval, so under load one transaction carries many events (as a Kafka
        # producer's linger.ms does). Woken after a quiet spell, it publishes at once.
        self.linger_seconds = linger_seconds
        self._lock_key = zlib.crc32(f"relay:{outbox.table.schema}".encode())
        # Built once: the relay runs after every committed request that emitted an event. The oldest
        # rows are locked in id order: a second publisher (a test, a leader handing over) waits
        # instead of deadlocking with this one. The batch's ids are picked once (an init plan) and
        # updated by primary key. As `id IN (subquery)` or a join, a plan cached while the outbox was
        # nearly empty walked the whole table for every call, re-running the subquery per row in
        # the worst case (decision 0029).
        outbox_table = outbox.table.fullname
        self._mark = f"""
            UPDATE {outbox_table} SET published_at = now()
            WHERE id = ANY(ARRAY(SELECT id FROM {outbox_table} WHERE published_at IS NULL
                                 ORDER BY id LIMIT {int(batch_size)} FOR UPDATE))
            RETURNING id, topic, key, payload
        """

    async def publish_batch(self) -> int:
        """Publish up to one batch of unpublished events; return how many were sent.

        The rows are marked and read in one statement, published, then committed: if publishing
        fails the marks roll back, so nothing is marked that was not sent. On a plain asyncpg
        connection (decision 0020): it runs after every request that emitted an event."""
        async with self.db.fast_transaction() as tx:
            await tx.conn.execute(_INDEX_SCAN_ONLY)
            rows = sorted(await tx.conn.fetch(self._mark), key=lambda r: r["id"])
            if not rows:
                return 0
            started = time.time_ns()
            await self.transport.publish(
                [OutgoingRecord(r["topic"], r["key"], r["payload"].encode()) for r in rows]
            )
            tracing.record_publishes(self.outbox.service, ((r["topic"], r["payload"]) for r in rows), started)
        for r in rows:
            EVENTS_PRODUCED.labels(self.outbox.service, r["topic"]).inc()
        return len(rows)

    async def drain(self) -> int:
        """Publish until a batch comes back short: that batch emptied the outbox as of its read, so
        asking again would cost a transaction for nothing (later commits wake the relay again)."""
        total = 0
        while True:
            sent = await self.publish_batch()
            total += sent
            if sent < self.batch_size:
                return total

    async def backlog(self) -> int:
        table = self.outbox.table
        async with self.db.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(table).where(table.c.published_at.is_(None))
            )
        return int(count or 0)

    async def _purge_published(self) -> None:
        table = self.outbox.table
        async with self.db.transaction() as session:
            await session.execute(
                table.delete().where(table.c.published_at < func.now() - text(f"interval '{RETENTION}'"))
            )

    async def run(self) -> None:
        """Background task: become the leader, then publish whenever woken or every poll interval."""
        while True:
            try:
                async with self.db.engine.connect() as leader:
                    try:
                        got = await leader.scalar(select(func.pg_try_advisory_lock(self._lock_key)))
                        await leader.commit()
                        if got:
                            await self._lead(leader)
                    finally:
                        # Close rather than pool the connection: that is what frees the session lock.
                        await leader.invalidate()
                await asyncio.sleep(self.poll_seconds * 4)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(self.poll_seconds)
                try:
                    OUTBOX_BACKLOG.labels(self.outbox.service).set(await self.backlog())
                except Exception:
                    log.warning("outbox backlog unavailable", exc_info=True)

    async def _lead(self, leader: AsyncConnection) -> None:
        await self._purge_published()
        loop = asyncio.get_running_loop()
        while True:
            self.outbox.wake.clear()
            await self.drain()
            drained_at = loop.time()
            OUTBOX_BACKLOG.labels(self.outbox.service).set(0)
            try:
                await asyncio.wait_for(self.outbox.wake.wait(), self.poll_seconds)
                if (linger := drained_at + self.linger_seconds - loop.time()) > 0:
                    await asyncio.sleep(linger)
            except TimeoutError:
                # Idle: prove we still hold the leader's connection (and so its lock).
                await leader.execute(text("SELECT 1"))
                await leader.commit()
