"""A Kafka group member left without partitions rejoins, with a patience that doubles per group.

The real broker: a one-partition topic and two members of one group, so one member holds nothing.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bank.infra.kafka import KafkaBroker
from shared.events.transports.base import OutgoingRecord
from shared.events.transports.kafka import KafkaSubscription, KafkaTransport, KafkaUnassigned

pytestmark = pytest.mark.kafka

WAIT = 300.0  # group formation on a busy 2-core machine can take minutes; nothing here is timed


async def test_an_idle_member_rejoins_and_its_patience_doubles(kafka_broker: KafkaBroker) -> None:
    # Two processes' worth of transport: the member that will hold the partition is patient (joining
    # can take longer than a second on a busy machine), the one that will hold nothing is not.
    patient = KafkaTransport(kafka_broker.bootstrap, partitions=1, unassigned_patience=3600.0)
    transport = KafkaTransport(kafka_broker.bootstrap, partitions=1, unassigned_patience=1.0)
    topic, group = f"test.unassigned.{uuid.uuid4().hex[:8]}", f"test-unassigned-{uuid.uuid4().hex[:8]}"
    await patient.publish([OutgoingRecord(topic, "k", b"v")])
    first = await patient.subscribe(group, [topic])
    second: KafkaSubscription | None = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not first.assignment:
            assert loop.time() < deadline, "the first member never got the partition"
            await first.poll(timeout=0.2)
        second = await transport.subscribe(group, [topic])
        # The second member holds nothing (one partition); after its patience it asks to rejoin.
        raised: KafkaUnassigned | None = None
        deadline = loop.time() + WAIT
        while raised is None:
            assert loop.time() < deadline, "the idle member never gave up its place"
            await first.poll(timeout=0.2)
            try:
                await second.poll(timeout=0.2)
            except KafkaUnassigned as exc:
                raised = exc
        assert group in str(raised)
        assert transport.patience[group] == 2.0  # next time it waits twice as long
        # Once a member of the group holds a partition again, the patience starts over.
        await second.close()
        second = await transport.subscribe(group, [topic])
        await first.close()  # the partition moves to the second member
        deadline = loop.time() + WAIT
        while group in transport.patience:
            assert loop.time() < deadline, "the member holding the partition never reset the patience"
            try:
                await second.poll(timeout=0.2)
            except KafkaUnassigned:
                pass  # still waiting for the partition: it rejoins, as a consumer would
        assert second.assignment
    finally:
        if second is not None:
            await second.close()
        await first.close()
        await transport.close()
        await patient.close()
