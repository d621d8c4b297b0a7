"""The real Apache Kafka broker of bank.infra.kafka: round trip, per-key order, data kept over a restart.

Never skipped: if the jars cannot be fetched or the broker cannot start, this test fails.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import DefaultSerializer, JsonSerializer
from kafka.structs import OffsetAndMetadata

from bank.infra.kafka import KafkaBroker, create_topic

pytestmark = pytest.mark.kafka

TOPIC = "test.broker.round-trip"
KEYS = [f"account-{i}" for i in range(7)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start(timeout=120)
    try:
        yield broker
    finally:
        broker.stop()


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        key_serializer=DefaultSerializer(),
        value_serializer=JsonSerializer(),
    )


def _consumer(bootstrap: str, group: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        key_deserializer=DefaultSerializer(),
        value_deserializer=JsonSerializer(),
    )
    consumer.subscribe([TOPIC])
    return consumer


def _consume(consumer: KafkaConsumer, count: int, timeout: float = 60) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _send(producer: KafkaProducer, seqs: range) -> None:
    futures = [
        producer.send(TOPIC, key=KEYS[n % len(KEYS)], value={"key": KEYS[n % len(KEYS)], "seq": n})
        for n in seqs
    ]
    producer.flush(timeout=30)
    for future in futures:
        metadata = future.get(timeout=30)
        assert metadata.offset >= 0


def _assert_per_key_order(records: list[Any], expected: range) -> None:
    by_key: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        assert record.key == record.value["key"]
        by_key[record.key].append(record.value["seq"])
        partitions[record.key].add(record.partition)
    for key in KEYS:
        want = [n for n in expected if KEYS[n % len(KEYS)] == key]
        assert by_key[key] == want, f"{key}: consumed {by_key[key]}, produced {want}"
        assert len(partitions[key]) == 1, f"{key} spread over partitions {partitions[key]}"


def test_round_trip_per_key_order_and_restart_keeps_data(broker: KafkaBroker) -> None:
    create_topic(broker.bootstrap, TOPIC, partitions=3)
    create_topic(broker.bootstrap, TOPIC, partitions=3)  # idempotent: an existing topic is fine

    producer = _producer(broker.bootstrap)
    try:
        _send(producer, range(100))
        # The idempotent producer really got a producer id from the broker.
        manager = producer._transaction_manager
        assert manager is not None and manager.producer_id_and_epoch.producer_id >= 0

        consumer = _consumer(broker.bootstrap, "group-a")
        try:
            records = _consume(consumer, 100)
            assert len(records) == 100
            _assert_per_key_order(records, range(100))
            assert {r.partition for r in records} == {0, 1, 2}
            # Commit explicit offsets (next offset to read = last + 1), as a transport would.
            last: dict[TopicPartition, int] = {}
            for r in records:
                last[TopicPartition(r.topic, r.partition)] = r.offset
            consumer.commit({tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()})
        finally:
            consumer.close()

        port = broker.port
        pid = broker.pid
        broker.stop()
        assert not broker.is_running()
        broker.start(timeout=120)
        assert broker.is_running()
        assert broker.port == port and broker.pid != pid

        # The producer made before the restart reconnects and goes on.
        _send(producer, range(100, 110))
    finally:
        producer.close(timeout=10)

    # Everything produced before the restart is still there, in order, for a new group...
    fresh = _consumer(broker.bootstrap, "group-b")
    try:
        records = _consume(fresh, 110)
        assert len(records) == 110
        _assert_per_key_order(records, range(110))
    finally:
        fresh.close()

    # ...and group-a's committed offsets survived: it sees only what came after the restart.
    again = _consumer(broker.bootstrap, "group-a")
    try:
        records = _consume(again, 10)
        assert sorted(r.value["seq"] for r in records) == list(range(100, 110))
        assert not _consume(again, 1, timeout=2)
    finally:
        again.close(autocommit=False)
