"""A Kafka group member left without partitions rejoins, with a patience that doubles per group.

The real broker: a one-partition topic and two members of one group, so one member holds nothing.
Which member the coordinator gives the partition to is its choice, so the test asks which is idle.
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


async def _poll(sub: KafkaSubscription) -> KafkaUnassigned | None:
    try:
        await sub.poll(timeout=0.2)
    except KafkaUnassigned as exc:
        return exc
    return None


async def test_an_idle_member_rejoins_and_its_patience_doubles(kafka_broker: KafkaBroker) -> None:
    # One transport per member, as in two processes: each keeps its own patience per group.
    a = KafkaTransport(kafka_broker.bootstrap, partitions=1, unassigned_patience=1.0)
    b = KafkaTransport(kafka_broker.bootstrap, partitions=1, unassigned_patience=1.0)
    topic, group = f"test.unassigned.{uuid.uuid4().hex[:8]}", f"test-unassigned-{uuid.uuid4().hex[:8]}"
    await a.publish([OutgoingRecord(topic, "k", b"v")])
    members: dict[KafkaTransport, KafkaSubscription] = {}
    loop = asyncio.get_running_loop()
    try:
        members[a] = await a.subscribe(group, [topic])
        deadline = loop.time() + WAIT
        while not members[a].assignment:  # alone, it gets the partition (joining may outlast 1 s)
            assert loop.time() < deadline, "the first member never got the partition"
            await _poll(members[a])
        members[b] = await b.subscribe(group, [topic])

        # One member holds the partition, the other nothing: the idle one asks to rejoin, and its
        # patience for the group doubles.
        idle: KafkaTransport | None = None
        deadline = loop.time() + WAIT
        while idle is None:
            assert loop.time() < deadline, "no idle member ever gave up its place"
            for transport, sub in members.items():
                waited = transport.patience.get(group, transport.unassigned_patience)
                raised = await _poll(sub)
                other = members[b if transport is a else a]
                if raised is not None and other.assignment:
                    assert group in str(raised)
                    assert transport.patience[group] == 2 * waited
                    idle = transport
                    break

        # When the member holding the partition leaves, the idle one gets it: its patience resets.
        holder = b if idle is a else a
        await members.pop(holder).close()
        deadline = loop.time() + WAIT
        while group in idle.patience:
            assert loop.time() < deadline, "the remaining member never took the partition"
            await _poll(members[idle])
        assert members[idle].assignment
    finally:
        for sub in members.values():
            await sub.close()
        await a.close()
        await b.close()


async def test_a_member_whose_session_lapsed_rejoins(kafka_broker: KafkaBroker) -> None:
    """The client still holds partitions but its own heartbeat bookkeeping says the session timed
    out (the coordinator has dropped it): the member gives up its subscription instead of waiting."""
    transport = KafkaTransport(kafka_broker.bootstrap, partitions=1)
    topic, group = f"test.lapsed.{uuid.uuid4().hex[:8]}", f"test-lapsed-{uuid.uuid4().hex[:8]}"
    await transport.publish([OutgoingRecord(topic, "k", b"v")])
    sub = await transport.subscribe(group, [topic])
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + WAIT
        while not sub.assignment:
            assert loop.time() < deadline, "the member never got the partition"
            await _poll(sub)
        assert await _poll(sub) is None  # a live session: nothing to do

        heartbeat = sub._consumer._coordinator.heartbeat  # type: ignore[union-attr]
        heartbeat.session_timeout_expired = lambda: True  # as after a session's worth of silence
        raised = await _poll(sub)
        assert raised is not None and "heartbeat" in str(raised) and group in str(raised)
        assert group not in transport.patience  # not an idle member: no longer patience next time
    finally:
        await sub.close()
        await transport.close()
