"""The Kafka transport, on kafka-python (a synchronous client, so each client gets its own thread).

Producer: idempotent, acks=all; `publish` returns only after every record is
acknowledged, so the relay marks outbox rows sent only when Kafka has them.
Consumer: a consumer group with auto-commit off; offsets are committed only
after the consumer's database transaction has committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from shared.events.transports.base import IncomingRecord, OutgoingRecord
from shared.health import Checker

log = logging.getLogger("shared.events.kafka")

T = TypeVar("T")


class _Worker:
    """One thread per kafka-python client: its objects are not meant to be shared across threads."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class KafkaTransport:
    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "bank",
        partitions: int = 6,
        publish_timeout: float = 60.0,
        unassigned_patience: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.partitions = partitions
        self.publish_timeout = publish_timeout
        # A member that holds no partition this long rejoins its group (see KafkaUnassigned); the
        # patience doubles, per group, each time that does not help.
        self.unassigned_patience = unassigned_patience
        self.patience: dict[str, float] = {}
        self._producer: KafkaProducer | None = None
        self._worker = _Worker(f"kafka-producer-{client_id}")
        self._known_topics: set[str] = set()

    async def start(self) -> None:
        if self._producer is None:
            self._producer = await self._worker.run(
                lambda: KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,
                    retries=2**31 - 1,
                    delivery_timeout_ms=int(self.publish_timeout * 1000),
                    request_timeout_ms=10_000,
                    reconnect_backoff_max_ms=1000,
                )
            )

    def _send_all(self, records: list[OutgoingRecord]) -> None:
        assert self._producer is not None
        futures = [self._producer.send(r.topic, key=r.key.encode(), value=r.value) for r in records]
        self._producer.flush(timeout=self.publish_timeout)
        for future in futures:
            future.get(timeout=self.publish_timeout)  # raises if any record was not acknowledged

    async def publish(self, records: list[OutgoingRecord]) -> None:
        if not records:
            return
        await self.start()
        await self.ensure_topics({r.topic for r in records})
        await self._worker.run(self._send_all, records)

    async def ensure_topics(self, topics: set[str]) -> None:
        missing = sorted(topics - self._known_topics)
        if missing:
            await asyncio.to_thread(self._create_topics, missing)
            self._known_topics.update(missing)

    def _create_topics(self, topics: list[str]) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
        try:
            for topic in topics:
                try:
                    admin.create_topics([NewTopic(topic, self.partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    async def subscribe(self, group: str, topics: list[str]) -> KafkaSubscription:
        await self.ensure_topics(set(topics))
        sub = KafkaSubscription(self, group, topics)
        await sub.connect()
        return sub

    def checker(self) -> Checker:
        async def check() -> tuple[str | None, dict[str, str]]:
            def probe() -> int:
                consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
                try:
                    return len(consumer.topics())
                finally:
                    consumer.close()

            try:
                topics = await asyncio.to_thread(probe)
            except KafkaError as exc:
                return f"kafka unreachable at {self.bootstrap}: {exc}", {"transport": "kafka"}
            return None, {"transport": "kafka", "bootstrap": self.bootstrap, "topics": str(topics)}

        return check

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._worker.run(producer.close)
        self._worker.shutdown()


class KafkaUnassigned(RuntimeError):
    """A group member that should leave and join its group again (a new subscription).

    * It has held no partition for a long time. On a busy machine we saw members join and then sit
      without an assignment for minutes. A group with more members than partitions has idle members
      by design: the doubling patience keeps those to a rebalance every few minutes at most.
    * Its heartbeats have gone unanswered for a whole session timeout while it still holds
      partitions: the coordinator has dropped it, whatever the client believes. On an overloaded
      machine we saw such a member keep its old assignment and never rejoin (decision 0019)."""


MAX_PATIENCE_SECONDS = 600.0


class _ForgetCommitted(ConsumerRebalanceListener):
    """Partitions revoked in a rebalance: another member may commit them now, so what this member
    knew of their committed offsets is stale."""

    def __init__(self, committed: dict[TopicPartition, int]) -> None:
        self.committed = committed

    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            self.committed.pop(tp, None)

    def on_partitions_assigned(self, assigned: Any) -> None:
        pass


def _session_lost(consumer: KafkaConsumer) -> bool:
    """Whether the client's own heartbeat bookkeeping says the session has timed out. Read through
    getattr: kafka-python keeps it on private attributes, and a version without them means no
    check rather than a crash."""
    heartbeat = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    expired = getattr(heartbeat, "session_timeout_expired", None)
    return bool(expired()) if callable(expired) else False


class KafkaSubscription:
    def __init__(self, transport: KafkaTransport, group: str, topics: list[str]) -> None:
        self.transport = transport
        self.group = group
        self.topics = sorted(set(topics))
        self._worker = _Worker(f"kafka-consumer-{group}")
        self._consumer: KafkaConsumer | None = None
        self._unassigned_since: float | None = None
        # What this member last committed per partition it holds (it is the only committer while
        # it holds them): the lag gauge needs no round trip per partition each time.
        self._committed: dict[TopicPartition, int] = {}

    async def connect(self) -> None:
        def make() -> KafkaConsumer:
            consumer = KafkaConsumer(
                bootstrap_servers=self.transport.bootstrap,
                group_id=self.group,
                client_id=f"{self.transport.client_id}-{self.group}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=10_000,
                heartbeat_interval_ms=1_000,
                max_poll_interval_ms=300_000,
                metadata_max_age_ms=5_000,
            )
            consumer.subscribe(self.topics, listener=_ForgetCommitted(self._committed))
            return consumer

        self._consumer = await self._worker.run(make)

    @property
    def assignment(self) -> list[tuple[str, int]]:
        return sorted(
            (tp.topic, tp.partition) for tp in (self._consumer.assignment() if self._consumer else ())
        )

    def _poll(self, max_records: int, timeout: float) -> list[IncomingRecord]:
        assert self._consumer is not None
        batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        self._check_assignment()
        out = []
        for tp, messages in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            for m in messages:
                out.append(IncomingRecord(tp.topic, tp.partition, m.offset, (m.key or b"").decode(), m.value))
        return out

    async def poll(self, max_records: int = 500, timeout: float = 0.5) -> list[IncomingRecord]:
        """The next records; raises KafkaUnassigned when this member should rejoin its group."""
        return await self._worker.run(self._poll, max_records, timeout)

    def _check_assignment(self) -> None:
        assert self._consumer is not None
        patience = self.transport.patience
        if self._consumer.assignment():
            self._unassigned_since = None
            patience.pop(self.group, None)
            if _session_lost(self._consumer):
                raise KafkaUnassigned(f"group {self.group}: no heartbeat answered for a session; rejoining")
            return
        now = time.monotonic()
        if self._unassigned_since is None:
            self._unassigned_since = now
        waited = patience.get(self.group, self.transport.unassigned_patience)
        if now - self._unassigned_since > waited:
            patience[self.group] = min(waited * 2, MAX_PATIENCE_SECONDS)
            raise KafkaUnassigned(f"group {self.group}: no partition assigned for {waited:.0f}s; rejoining")

    def _commit(self, records: list[IncomingRecord]) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        try:
            self._consumer.commit(offsets)
            self._committed.update({tp: meta.offset for tp, meta in offsets.items()})
        except CommitFailedError as exc:
            # The group rebalanced under us: the new owner re-reads from the last commit and the
            # inbox turns the repeats into no-ops.
            log.warning("kafka commit for %s skipped after a rebalance: %s", self.group, exc)

    async def commit(self, records: list[IncomingRecord]) -> None:
        if records:
            await self._worker.run(self._commit, records)

    def _lag(self) -> dict[str, int]:
        """Per topic: records past the last committed offset of the partitions this member holds.
        One request for the ends; committed offsets are asked once per partition it gains."""
        assert self._consumer is not None
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned)
        lag: dict[str, int] = {}
        for tp in assigned:
            if tp not in self._committed:
                self._committed[tp] = self._consumer.committed(tp) or 0
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, ends[tp] - self._committed[tp])
        return lag

    async def lag(self) -> dict[str, int]:
        return await self._worker.run(self._lag)

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            # Never auto-commit on close: positions polled but not yet handled must be redelivered.
            await self._worker.run(lambda: consumer.close(autocommit=False))
        self._worker.shutdown()
