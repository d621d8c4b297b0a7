"""The embedded transport: an append-only, partitioned log in PostgreSQL.

* `events.log(topic, partition, offset)` holds the records; a record's offset
  comes from `events.partitions.next_offset`, bumped under that row's lock in
  the publishing transaction, so offsets become visible strictly in order.
* A consumer group's progress is `events.consumer_offsets`.
* Group members announce themselves in `events.group_members` and split the
  partitions round-robin; a member only reads a partition while it holds a
  session advisory lock on (group, topic, partition), so two members never
  read one partition at once, and a crashed member's locks vanish with its
  connection.
* Wake-ups come from LISTEN/NOTIFY on a channel per topic (`events_log:<topic>`), so a consumer is
  woken only by the topics it reads; polling is the fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
import zlib
from collections import defaultdict
from typing import Any

import asyncpg

from shared.config import to_libpq
from shared.events.transports.base import IncomingRecord, OutgoingRecord
from shared.health import Checker
from shared.priority import server_is_local, yield_cpu

log = logging.getLogger("shared.events.pglog")

CHANNEL_PREFIX = "events_log:"


def channel_of(topic: str) -> str:
    """The NOTIFY channel of a topic: PostgreSQL channel names stop at 63 bytes, so long ones are hashed."""
    channel = f"{CHANNEL_PREFIX}{topic}"
    if len(channel.encode()) <= 63:
        return channel
    return f"{CHANNEL_PREFIX}{hashlib.sha1(topic.encode()).hexdigest()}"


# Offsets are reserved under each partition row's lock, taken in a fixed order (so two publishers
# cannot deadlock) and held until the statement commits: offsets become visible strictly in order.
_APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::bytea[])
        AS b(topic, partition, seq, key, payload)
), counts AS (
    SELECT topic, partition, count(*) AS n FROM batch GROUP BY topic, partition
), locked AS MATERIALIZED (
    SELECT p.topic, p.partition FROM events.partitions p JOIN counts c USING (topic, partition)
    ORDER BY p.topic, p.partition FOR UPDATE OF p
), bumped AS (
    UPDATE events.partitions p SET next_offset = p.next_offset + c.n
    FROM counts c JOIN locked l USING (topic, partition)
    WHERE p.topic = c.topic AND p.partition = c.partition
    RETURNING p.topic, p.partition, p.next_offset - c.n AS first
), appended AS (
    INSERT INTO events.log (topic, partition, "offset", key, payload)
    SELECT b.topic, b.partition, u.first + b.seq, b.key, b.payload
    FROM batch b JOIN bumped u USING (topic, partition)
    RETURNING 1
)
SELECT pg_notify(channel, '') FROM unnest($6::text[]) AS channel WHERE EXISTS (SELECT 1 FROM appended)
"""


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


def _lock_key(group: str, topic: str) -> int:
    return zlib.crc32(f"{group}\x00{topic}".encode()) - 2**31  # fits int4


class PgLogTransport:
    name = "pglog"

    def __init__(
        self,
        database_url: str,
        *,
        partitions: int = 8,
        member_ttl: float = 10.0,
        application_name: str = "events",
        background: bool = False,
    ) -> None:
        self.dsn = to_libpq(database_url)
        self.server_settings = {"application_name": application_name}
        # A background service's reads of the log yield the CPU as the service does (decision 0033).
        # Its publisher does not: it holds partition rows' locks and the NOTIFY lock, which the card
        # path's relays wait for, until it commits.
        self.background = background and server_is_local(database_url)
        self.default_partitions = partitions
        self.member_ttl = member_ttl
        self._pool: asyncpg.Pool | None = None
        self._partitions: dict[str, int] = {}
        self._publish_conn: Any = None
        self._publish_lock = asyncio.Lock()

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=4, init=self.prepare, server_settings=self.server_settings
            )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("transport not started")
        return self._pool

    async def prepare(self, conn: asyncpg.Connection) -> None:
        if self.background:
            yield_cpu(conn.get_server_pid())

    async def partitions_of(self, conn: Any, topic: str) -> int:
        if topic not in self._partitions:
            await conn.execute(
                """INSERT INTO events.topics (topic, partitions) VALUES ($1, $2) ON CONFLICT DO NOTHING;""",
                topic, self.default_partitions,
            )  # fmt: skip
            count = await conn.fetchval("SELECT partitions FROM events.topics WHERE topic = $1", topic)
            await conn.execute(
                """INSERT INTO events.partitions (topic, partition)
                   SELECT $1, p FROM generate_series(0, $2 - 1) AS p ON CONFLICT DO NOTHING""",
                topic, count,
            )  # fmt: skip
            self._partitions[topic] = int(count)
        return self._partitions[topic]

    async def publish(self, records: list[OutgoingRecord]) -> None:
        """Append a batch in one statement (one round trip, atomic on its own): reserve each
        partition's offsets, insert the records, notify the listeners."""
        if not records:
            return
        async with self._publish_lock:
            conn = await self._publisher()
            try:
                seen: dict[tuple[str, int], int] = defaultdict(int)
                columns: tuple[list[Any], ...] = ([], [], [], [], [])
                for record in records:
                    partition = partition_for(record.key, await self.partitions_of(conn, record.topic))
                    seq = seen[(record.topic, partition)]
                    seen[(record.topic, partition)] += 1
                    for column, value in zip(
                        columns, (record.topic, partition, seq, record.key, record.value), strict=True
                    ):
                        column.append(value)
                channels = sorted({channel_of(r.topic) for r in records})
                await conn.execute(_APPEND, *columns, channels)
            except BaseException:
                await self._drop_publisher()
                raise

    async def _publisher(self) -> Any:
        # A connection of its own: a pooled one would cost a reset round trip on every release.
        if self._publish_conn is None or self._publish_conn.is_closed():
            self._publish_conn = await asyncpg.connect(self.dsn, server_settings=self.server_settings)
        return self._publish_conn

    async def _drop_publisher(self) -> None:
        conn, self._publish_conn = self._publish_conn, None
        if conn is not None:
            conn.terminate()

    async def subscribe(self, group: str, topics: list[str]) -> PgLogSubscription:
        sub = PgLogSubscription(self, group, topics)
        await sub.connect()
        return sub

    def checker(self) -> Checker:
        async def check() -> tuple[str | None, dict[str, str]]:
            async with self.pool.acquire() as conn:
                topics = await conn.fetchval("SELECT count(*) FROM events.topics")
            return None, {"transport": "pglog", "topics": str(topics)}

        return check

    async def close(self) -> None:
        await self._drop_publisher()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PgLogSubscription:
    def __init__(self, transport: PgLogTransport, group: str, topics: list[str]) -> None:
        self.transport = transport
        self.group = group
        self.topics = sorted(set(topics))
        self.member_id = uuid.uuid4().hex
        self._conn: Any = None
        self._wake = asyncio.Event()
        self._positions: dict[tuple[str, int], int] = {}  # owned partition -> next offset to read
        self._next_rebalance = 0.0

    async def connect(self) -> None:
        self._conn = await asyncpg.connect(self.transport.dsn, server_settings=self.transport.server_settings)
        await self.transport.prepare(self._conn)
        for topic in self.topics:
            await self._conn.add_listener(channel_of(topic), self._on_notify)
        self._positions.clear()
        self._next_rebalance = 0.0
        await self._rebalance()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _ensure_connected(self) -> None:
        if self._conn is None or self._conn.is_closed():
            log.warning("pglog consumer %s reconnecting", self.group)
            await self.connect()

    async def _rebalance(self) -> None:
        conn = self._conn
        ttl = self.transport.member_ttl
        all_partitions: list[tuple[str, int]] = []
        for topic in self.topics:
            count = await self.transport.partitions_of(conn, topic)
            all_partitions.extend((topic, p) for p in range(count))
        await conn.execute(
            """INSERT INTO events.group_members (group_id, member_id) VALUES ($1, $2)
               ON CONFLICT (group_id, member_id) DO UPDATE SET heartbeat_at = now()""",
            self.group, self.member_id,
        )  # fmt: skip
        await conn.execute(
            """DELETE FROM events.group_members
               WHERE group_id = $1 AND heartbeat_at < now() - make_interval(secs => $2)""",
            self.group, ttl,
        )  # fmt: skip
        members = [
            r["member_id"]
            for r in await conn.fetch(
                "SELECT member_id FROM events.group_members WHERE group_id = $1 ORDER BY member_id",
                self.group,
            )
        ]
        me = members.index(self.member_id)
        wanted = {tp for i, tp in enumerate(all_partitions) if i % len(members) == me}
        for tp in [tp for tp in self._positions if tp not in wanted]:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", _lock_key(self.group, tp[0]), tp[1])
            del self._positions[tp]
        for tp in sorted(wanted - self._positions.keys()):
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", _lock_key(self.group, tp[0]), tp[1]
            )
            if got:
                committed = await conn.fetchval(
                    """SELECT next_offset FROM events.consumer_offsets
                       WHERE group_id = $1 AND topic = $2 AND partition = $3""",
                    self.group, tp[0], tp[1],
                )  # fmt: skip
                self._positions[tp] = committed or 0
        # Re-check soon while the split is incomplete (a departing owner still holds a lock).
        settled = len(self._positions) == len(wanted)
        self._next_rebalance = time.monotonic() + (ttl / 3 if settled else 0.2)

    @property
    def assignment(self) -> list[tuple[str, int]]:
        return sorted(self._positions)

    async def poll(self, max_records: int = 500, timeout: float = 0.5) -> list[IncomingRecord]:
        await self._ensure_connected()
        if time.monotonic() >= self._next_rebalance:
            await self._rebalance()
        self._wake.clear()
        records = await self._fetch(max_records)
        if not records:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            records = await self._fetch(max_records)
        for r in records:
            self._positions[(r.topic, r.partition)] = r.offset + 1
        return records

    async def _fetch(self, max_records: int) -> list[IncomingRecord]:
        if not self._positions:
            return []
        owned = list(self._positions.items())
        per_partition = max(1, math.ceil(max_records / len(owned)))
        rows = await self._conn.fetch(
            """SELECT l.topic, l.partition, l."offset", l.key, l.payload
               FROM unnest($1::text[], $2::int[], $3::bigint[]) AS o(topic, partition, pos)
               CROSS JOIN LATERAL (
                   SELECT * FROM events.log l
                   WHERE l.topic = o.topic AND l.partition = o.partition AND l."offset" >= o.pos
                   ORDER BY l."offset" LIMIT $4
               ) AS l""",
            [t for (t, _), _ in owned], [p for (_, p), _ in owned], [pos for _, pos in owned], per_partition,
        )  # fmt: skip
        return [IncomingRecord(r["topic"], r["partition"], r["offset"], r["key"], r["payload"]) for r in rows]

    async def commit(self, records: list[IncomingRecord]) -> None:
        if not records:
            return
        await self._ensure_connected()
        latest: dict[tuple[str, int], int] = {}
        for r in records:
            latest[(r.topic, r.partition)] = max(latest.get((r.topic, r.partition), -1), r.offset + 1)
        await self._conn.executemany(
            """INSERT INTO events.consumer_offsets (group_id, topic, partition, next_offset)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (group_id, topic, partition)
               DO UPDATE SET
                   next_offset = GREATEST(events.consumer_offsets.next_offset, EXCLUDED.next_offset),
                   updated_at = now()""",
            [(self.group, t, p, off) for (t, p), off in latest.items()],
        )  # fmt: skip

    async def lag(self) -> dict[str, int]:
        # From the pool, not the member's connection: lag may be asked while a poll is waiting.
        rows = await self.transport.pool.fetch(
            """SELECT p.topic, sum(p.next_offset - coalesce(o.next_offset, 0))::bigint AS lag
               FROM events.partitions p
               LEFT JOIN events.consumer_offsets o
                 ON o.group_id = $1 AND o.topic = p.topic AND o.partition = p.partition
               WHERE p.topic = ANY($2::text[]) GROUP BY p.topic""",
            self.group, self.topics,
        )  # fmt: skip
        return {r["topic"]: int(r["lag"]) for r in rows}

    async def close(self) -> None:
        if self._conn is None or self._conn.is_closed():
            return
        try:
            await self._conn.execute(
                "DELETE FROM events.group_members WHERE group_id = $1 AND member_id = $2",
                self.group, self.member_id,
            )  # fmt: skip
        finally:
            await self._conn.close()  # releases every advisory lock this member held
