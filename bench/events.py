"""Benchmark of the event pipeline: outbox -> relay -> transport -> consumer, on pglog and on Kafka.

    .venv/bin/python -m bench.events [--transport pglog|kafka|both] [--events 10000]
                                     [--rate 500] [--seconds 20]

Everything is real and thrown away afterwards: a durable PostgreSQL (default settings, fsync on) in a
temporary folder on a free port, one database per transport migrated with `bank.migrate.upgrade`, and
for Kafka a KRaft broker in a temporary folder. The processes are laid out as in production: this one is
the accounts service (the writer commits events with `Outbox.emit`, or `emit_many` for 50 at once; its
`Relay` publishes them), and the
`Consumer` runs in a child process of its own, as another service would, with its own pool and client.

Per transport:

* Throughput. `--events` events, 50 per transaction, written as fast as one task can while the relay and
  the consumer run: events/s = N / (first write started -> last event handled and committed). Then each
  stage alone on a fresh topic: the writer with nothing else running, the relay draining that N-event
  outbox backlog, and the consumer working through the N published events (from its first poll).
* Latency. An open-loop writer, one event per transaction, `--rate` events/s for `--seconds`: write k is
  started at start + k/rate whether or not earlier writes have finished. Latency = the consumer's commit
  of the event minus its scheduled write time, also split into stages from timestamps taken at each
  hand-over (outbox commit, transport acknowledgement, consumer poll). Both processes stamp with
  `time.perf_counter`, which is CLOCK_MONOTONIC on Linux: one clock for the whole machine.

The consumer's handler is a typical projection: it parses the payload and inserts one row.
Figures go to stdout and to bench/results/events-<transport>.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psutil
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from bank.infra.kafka import LIB_DIR, KafkaBroker, ensure_jars
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade
from shared.db import Database, after_commit
from shared.events.consumer import Consumer
from shared.events.envelope import Envelope, EventData
from shared.events.outbox import Outbox, Outgoing
from shared.events.relay import Relay
from shared.events.transports.base import IncomingRecord, OutgoingRecord, Subscription, Transport
from shared.events.transports.kafka import KafkaTransport
from shared.events.transports.pglog import PgLogTransport
from shared.health import Checker

SERVICE = "accounts"
ACCOUNTS = 1_000  # events are spread over this many account ids (the message key)
PER_TRANSACTION = 50  # events per writer transaction in the throughput runs
WARMUP_EVENTS = 100  # sent through each pipeline before measuring: topics exist, the group has joined
WRITERS = 8  # concurrent writer transactions at most; later writes queue for a slot, not for a pool timeout
STALL_SECONDS = 60.0  # give up when no event has been handled for this long
RESULTS_DIR = Path(__file__).resolve().parent / "results"

clock = time.perf_counter  # every timestamp, in both processes
T = TypeVar("T")


# -- the events and what the consumer writes -----------------------------------------------------------


class BenchEvent(EventData):
    event_type: ClassVar[str] = "bench.event.happened"
    seq: int  # < 0 for warm-up events
    amount_minor: int
    currency: str = "GBP"


def subject_of(seq: int) -> str:
    return f"acc_{seq * 7_919 % ACCOUNTS}"  # consecutive events land on scattered accounts


def event_of(seq: int) -> BenchEvent:
    return BenchEvent(seq=seq, amount_minor=seq * 37 % 10_000 + 1)


handled_table = sa.Table(
    "bench_handled",
    sa.MetaData(schema=SERVICE),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
)


# -- infrastructure as seen by both processes ----------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """Where the database and the transport are, and the batch sizes (sent to the consumer process)."""

    transport: str  # "pglog" or "kafka"
    database_url: str
    bootstrap: str | None
    relay_batch: int
    consumer_batch: int

    def make_transport(self, client_id: str) -> Transport:
        if self.transport == "kafka":
            assert self.bootstrap is not None
            return KafkaTransport(self.bootstrap, client_id=client_id)
        return PgLogTransport(self.database_url)


_SEQ = re.compile(rb'"seq":(-?\d+)')

# Called with (topic, sequence numbers, clock()) when a publish is acknowledged or a poll returns.
Stamp = Callable[[str, list[int], float], None]


def seqs_of(records: Iterable[OutgoingRecord | IncomingRecord]) -> list[int]:
    """The sequence numbers inside the envelopes' JSON, without paying for a full parse."""
    return [int(m.group(1)) for r in records if (m := _SEQ.search(r.value))]


class TracingSubscription:
    def __init__(self, inner: Subscription, on_poll: Stamp) -> None:
        self.inner = inner
        self.on_poll = on_poll

    async def poll(self, max_records: int = 500, timeout: float = 0.5) -> list[IncomingRecord]:
        records = await self.inner.poll(max_records, timeout)
        if records:
            self.on_poll(records[0].topic, seqs_of(records), clock())
        return records

    async def commit(self, records: list[IncomingRecord]) -> None:
        await self.inner.commit(records)

    async def lag(self) -> dict[str, int]:
        return await self.inner.lag()

    async def close(self) -> None:
        await self.inner.close()


class TracingTransport:
    """A transport that reports each record when its publish is acknowledged and when a poll returns it.

    A publish holds one topic's records here: each benchmark pipeline has its own topic and drains it.
    """

    def __init__(self, inner: Transport, *, on_publish: Stamp | None = None, on_poll: Stamp | None = None):
        self.inner = inner
        self.name = inner.name
        self.on_publish = on_publish
        self.on_poll = on_poll

    async def start(self) -> None:
        await self.inner.start()

    async def publish(self, records: list[OutgoingRecord]) -> None:
        await self.inner.publish(records)
        if records and self.on_publish is not None:
            self.on_publish(records[0].topic, seqs_of(records), clock())

    async def subscribe(self, group: str, topics: list[str]) -> Subscription:
        sub = await self.inner.subscribe(group, topics)
        return sub if self.on_poll is None else TracingSubscription(sub, self.on_poll)

    def checker(self) -> Checker:
        return self.inner.checker()

    async def close(self) -> None:
        await self.inner.close()


# -- the consuming service: a child process ------------------------------------------------------------

# What the child sends after each poll and each commit: (kind, seqs, clock(), the child's CPU seconds).
Report = tuple[str, list[int], float, float]
_PENDING = "bench.pending"


def consumer_process(setup: Setup, topic: str, conn: Connection) -> None:
    """Entry point of the consumer process: runs one Consumer on `topic` until the parent says stop."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group; exit quietly
        asyncio.run(_consume(setup, topic, conn))


async def _consume(setup: Setup, topic: str, conn: Connection) -> None:
    def send(kind: str, seqs: list[int], t: float) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the stop below follows
            conn.send((kind, seqs, t, time.process_time()))

    async def handle(session: AsyncSession, envelope: Envelope) -> None:
        data = envelope.data_as(BenchEvent)
        await session.execute(
            handled_table.insert().values(
                event_id=envelope.id,
                account_id=envelope.subject,
                seq=data.seq,
                amount_minor=data.amount_minor,
            )
        )
        # Report the event when the consumer's transaction commits: one callback per transaction.
        pending: list[int] | None = session.info.get(_PENDING)
        if pending is None:
            batch: list[int] = []
            session.info[_PENDING] = pending = batch
            after_commit(session, lambda: send("handled", batch, clock()))
        pending.append(data.seq)

    transport = TracingTransport(
        setup.make_transport("bench-consumer"), on_poll=lambda _, seqs, t: send("polled", seqs, t)
    )
    db = Database(setup.database_url, pool_size=5, application_name="bench-consumer")
    consumer = Consumer(
        f"{SERVICE}.{topic}",
        service=SERVICE,
        db=db,
        transport=transport,
        handlers={BenchEvent.event_type: handle},
        topics=[topic],
        schema=SERVICE,
        batch_size=setup.consumer_batch,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), stop.set)  # "stop", or end of file when the parent has died
    await transport.start()
    task = asyncio.create_task(consumer.run())
    try:
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()
        await db.dispose()


class ConsumerProcess:
    """The parent's handle on a consumer process; its reports land in `trace` on the parent's loop."""

    def __init__(self, setup: Setup, topic: str, trace: Trace) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process = context.Process(
            target=consumer_process, args=(setup, topic, child_end), name=f"consumer {topic}", daemon=True
        )
        self.process.start()
        child_end.close()
        self.trace = trace
        self.loop = asyncio.get_running_loop()
        self.reader = threading.Thread(target=self._read, name=f"reports {topic}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with contextlib.suppress(EOFError, OSError, RuntimeError):  # child gone, or our loop closed
            while True:
                report: Report = self.conn.recv()
                self.loop.call_soon_threadsafe(self.trace.receive, report)

    def check(self) -> None:
        if self.process.exitcode is not None:
            raise RuntimeError(f"the consumer process exited with code {self.process.exitcode}")

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        await asyncio.to_thread(self.process.join, 30)
        if self.process.exitcode is None:
            self.process.kill()
            await asyncio.to_thread(self.process.join, 10)
        self.conn.close()


# -- timestamps at each hand-over ----------------------------------------------------------------------


@dataclass
class Trace:
    """When each event of one topic passed each stage (clock() seconds), by sequence number."""

    intended: dict[int, float] = field(default_factory=dict)  # open-loop runs only
    written: dict[int, float] = field(default_factory=dict)  # writer's transaction committed
    published: dict[int, float] = field(default_factory=dict)  # transport acknowledged the publish
    polled: dict[int, float] = field(default_factory=dict)  # a consumer poll returned it
    handled: dict[int, float] = field(default_factory=dict)  # consumer's transaction committed
    publish_sizes: list[int] = field(default_factory=list)  # of the publishes and polls that carry
    poll_sizes: list[int] = field(default_factory=list)  # measured events (not only warm-up ones)
    consumer_cpu: list[tuple[float, float]] = field(default_factory=list)  # (clock(), its CPU seconds)
    measured_done: int = 0
    warmup_done: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def stamp_published(self, seqs: list[int], t: float) -> None:
        if any(seq >= 0 for seq in seqs):
            self.publish_sizes.append(len(seqs))
        for seq in seqs:
            self.published.setdefault(seq, t)

    def receive(self, report: Report) -> None:
        kind, seqs, t, cpu = report
        self.consumer_cpu.append((t, cpu))
        if kind == "polled":
            if any(seq >= 0 for seq in seqs):
                self.poll_sizes.append(len(seqs))
            for seq in seqs:
                self.polled.setdefault(seq, t)
            return
        for seq in seqs:
            self.handled[seq] = t
        self.measured_done += sum(1 for seq in seqs if seq >= 0)
        self.warmup_done += sum(1 for seq in seqs if seq < 0)
        self.progress.set()

    def consumer_cpu_between(self, since: float, until: float) -> float:
        """CPU seconds the consumer process used in [since, until], from its last report at or before each."""

        def at(t: float) -> float:
            i = bisect.bisect_right(self.consumer_cpu, t, key=lambda sample: sample[0])
            return self.consumer_cpu[i - 1][1] if i else 0.0

        return at(until) - at(since)


# -- one pipeline: writer, relay and consumer on one topic ---------------------------------------------


class Pipeline:
    """A topic with its own writer/relay pool, relay, and consumer process and group.

    Each pipeline gets fresh pools and processes, so nothing carries over to the next.
    """

    def __init__(self, setup: Setup, transport: TracingTransport, topic: str, trace: Trace) -> None:
        self.setup = setup
        self.topic = topic
        self.trace = trace
        self.db = Database(setup.database_url, pool_size=10, application_name="bench-accounts")
        self.outbox = Outbox(SERVICE)
        self.relay = Relay(self.db, self.outbox, transport, batch_size=setup.relay_batch)
        self.write_slots = asyncio.Semaphore(WRITERS)
        self.relay_task: asyncio.Task[None] | None = None
        self.consumer: ConsumerProcess | None = None

    async def write(self, seqs: Sequence[int]) -> None:
        """Commit these events to the outbox in one transaction."""
        async with self.write_slots, self.db.transaction() as session:
            if len(seqs) == 1:
                await self.outbox.emit(session, self.topic, subject_of(seqs[0]), event_of(seqs[0]))
            else:  # a service writing many events in one transaction writes them in one statement
                await self.outbox.emit_many(
                    session, [Outgoing(self.topic, subject_of(seq), event_of(seq)) for seq in seqs]
                )
        t = clock()
        for seq in seqs:
            self.trace.written[seq] = t

    async def write_many(self, seqs: Sequence[int], per_transaction: int = PER_TRANSACTION) -> None:
        for i in range(0, len(seqs), per_transaction):
            await self.write(seqs[i : i + per_transaction])

    def start_relay(self) -> None:
        self.relay_task = asyncio.create_task(self.relay.run(), name=f"relay {self.topic}")

    def start_consumer(self) -> None:
        self.consumer = ConsumerProcess(self.setup, self.topic, self.trace)

    async def warm_up(self) -> None:
        await self.write_many(range(-1, -WARMUP_EVENTS - 1, -1))
        await self.until(lambda: self.trace.warmup_done >= WARMUP_EVENTS, "warm-up events")

    async def until_handled(self, count: int) -> None:
        await self.until(lambda: self.trace.measured_done >= count, f"{count} events")

    async def until(self, done: Callable[[], bool], what: str) -> None:
        """Wait for `done()`; fail if the relay or the consumer died, or nothing was handled for a while."""
        last_seen, last_change = -1, clock()
        while True:
            self.trace.progress.clear()
            if done():
                return
            if self.relay_task is not None and self.relay_task.done():
                self.relay_task.result()  # raises the relay's error
                raise RuntimeError("the relay stopped")
            if self.consumer is not None:
                self.consumer.check()
            seen = self.trace.measured_done + self.trace.warmup_done
            if seen != last_seen:
                last_seen, last_change = seen, clock()
            elif clock() - last_change > STALL_SECONDS:
                raise RuntimeError(f"stalled waiting for {what}: nothing handled for {STALL_SECONDS:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.trace.progress.wait(), 1.0)

    async def close(self) -> None:
        if self.relay_task is not None:
            self.relay_task.cancel()
            await asyncio.gather(self.relay_task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()
        await self.db.dispose()


@contextlib.asynccontextmanager
async def pipeline(
    setup: Setup, transport: TracingTransport, traces: dict[str, Trace], topic: str
) -> AsyncIterator[Pipeline]:
    trace = traces[topic] = Trace()
    p = Pipeline(setup, transport, topic, trace)
    try:
        yield p
    finally:
        await p.close()


# -- figures ---------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on already sorted values."""
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Distribution:
    """A latency distribution in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    p99_9: float
    max: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Distribution:
        ms = sorted(s * 1000 for s in seconds)
        if not ms:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(ms),
            mean=sum(ms) / len(ms),
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            p99_9=percentile(ms, 99.9),
            max=ms[-1],
        )


class Stopwatch:
    """Wall time on `clock()`, the service process's CPU time (all its threads), and the whole machine's
    busy CPU time (PostgreSQL, the broker, and anything else running too), since it was made."""

    def __init__(self) -> None:
        self.wall = clock()
        self.cpu = time.process_time()
        self.machine = psutil.cpu_times()

    def machine_busy_percent(self) -> float:
        """How much of all the machine's CPUs was busy since the start: near 100, the machine is the limit."""
        before, after = self.machine, psutil.cpu_times()
        idle = (after.idle - before.idle) + (after.iowait - before.iowait)
        busy = sum(after) - sum(before) - idle
        return round(100 * busy / ((clock() - self.wall) * (os.cpu_count() or 1)), 1)

    def rate(
        self, count: int, trace: Trace, *, since: float | None = None, until: float | None = None
    ) -> dict[str, float]:
        """events/s over [since, until] (default: from the start until now), and CPU ms per event."""
        since = self.wall if since is None else since
        until = clock() if until is None else until
        service_cpu = time.process_time() - self.cpu
        consumer_cpu = trace.consumer_cpu_between(since, until)
        return {
            "seconds": round(until - since, 3),
            "events_per_second": round(count / (until - since), 1),
            "service_cpu_ms_per_event": round(service_cpu * 1000 / count, 3),
            "consumer_cpu_ms_per_event": round(consumer_cpu * 1000 / count, 3),
        }


def mean(values: Sequence[int]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


def gaps(seqs: range, start: dict[int, float], end: dict[int, float]) -> list[float]:
    """Per event, end minus start (seconds), for the events that have both timestamps."""
    return [end[s] - start[s] for s in seqs if s in start and s in end]


# -- the measurements ------------------------------------------------------------------------------------


async def measure_throughput(
    setup: Setup, transport: TracingTransport, traces: dict[str, Trace], n: int
) -> dict[str, Any]:
    seqs = range(n)
    async with pipeline(setup, transport, traces, "bench.throughput") as p:
        p.start_relay()
        p.start_consumer()
        await p.warm_up()
        watch = Stopwatch()
        await p.write_many(seqs)
        await p.until_handled(n)
        trace = p.trace
        together = {
            **watch.rate(n, trace, until=max(trace.handled[s] for s in seqs)),
            "machine_busy_percent": watch.machine_busy_percent(),
            "writer_done_after_s": round(max(trace.written[s] for s in seqs) - watch.wall, 3),
            "mean_relay_batch": mean(trace.publish_sizes),
            "mean_consumer_batch": mean(trace.poll_sizes),
        }

    async with pipeline(setup, transport, traces, "bench.stages") as p:
        trace = p.trace
        await p.write_many(range(-1, -WARMUP_EVENTS - 1, -1))
        await p.relay.drain()  # the topic exists and the producer knows it before anything is timed
        watch = Stopwatch()
        await p.write_many(seqs)
        writer_alone = watch.rate(n, trace)
        watch = Stopwatch()
        await p.relay.drain()
        relay_alone = watch.rate(n, trace)
        watch = Stopwatch()
        p.start_consumer()
        await p.until_handled(n)
        consumer_alone = watch.rate(  # from its first poll: starting up and joining are not consuming
            n, trace, since=min(trace.polled[s] for s in seqs), until=max(trace.handled[s] for s in seqs)
        )

    return {
        "events": n,
        "events_per_transaction": PER_TRANSACTION,
        "pipeline": together,
        "writer_alone": writer_alone,
        "relay_alone": relay_alone,
        "consumer_alone": consumer_alone,
    }


async def measure_latency(
    setup: Setup, transport: TracingTransport, traces: dict[str, Trace], rate: float, seconds: float
) -> dict[str, Any]:
    count = round(rate * seconds)
    seqs = range(count)
    async with pipeline(setup, transport, traces, "bench.latency") as p:
        p.start_relay()
        p.start_consumer()
        await p.warm_up()
        trace = p.trace
        writes: list[asyncio.Task[None]] = []
        watch = Stopwatch()
        start = watch.wall + 0.05
        for seq in seqs:
            trace.intended[seq] = intended = start + seq / rate
            if (delay := intended - clock()) > 0:
                await asyncio.sleep(delay)
            writes.append(asyncio.create_task(p.write([seq])))
        await asyncio.gather(*writes)
        await p.until_handled(count)
        # Below the offered rate when the pipeline cannot keep up: latency then measures a growing queue.
        sustained = {
            **watch.rate(count, trace, since=start, until=max(trace.handled[s] for s in seqs)),
            "machine_busy_percent": watch.machine_busy_percent(),
        }

    stages = {
        "end_to_end": gaps(seqs, trace.intended, trace.handled),
        "after_write": gaps(seqs, trace.written, trace.handled),
        "write": gaps(seqs, trace.intended, trace.written),
        "relay": gaps(seqs, trace.written, trace.published),
        "transport": gaps(seqs, trace.published, trace.polled),
        "consume": gaps(seqs, trace.polled, trace.handled),
    }
    return {
        "rate": rate,
        "seconds": seconds,
        "events": count,
        "events_per_transaction": 1,
        "sustained": sustained,
        "mean_relay_batch": mean(trace.publish_sizes),
        "mean_consumer_batch": mean(trace.poll_sizes),
        "ms": {name: asdict(Distribution.of(values)) for name, values in stages.items()},
    }


async def run_transport(setup: Setup, args: Args, environment: dict[str, str]) -> dict[str, Any]:
    traces: dict[str, Trace] = {}

    def on_publish(topic: str, seqs: list[int], t: float) -> None:
        if topic in traces:
            traces[topic].stamp_published(seqs, t)

    transport = TracingTransport(setup.make_transport("bench"), on_publish=on_publish)
    await transport.start()
    try:
        db = Database(setup.database_url, pool_size=1, application_name="bench-setup")
        async with db.engine.begin() as conn:
            await conn.run_sync(handled_table.metadata.create_all)
        await db.dispose()
        result: dict[str, Any] = {
            "transport": setup.transport,
            "environment": environment,
            "config": {
                **asdict(args),
                "accounts": ACCOUNTS,
                "writers": WRITERS,
                "warmup_events": WARMUP_EVENTS,
            },
        }
        if args.events > 0:
            result["throughput"] = await measure_throughput(setup, transport, traces, args.events)
        if args.rate > 0 and args.seconds > 0:
            result["latency"] = await measure_latency(setup, transport, traces, args.rate, args.seconds)
        return result
    finally:
        await transport.close()


# -- report ------------------------------------------------------------------------------------------------

LATENCY_ROWS = (
    ("end_to_end", "end to end (scheduled write -> handler commit)"),
    ("after_write", "event path (outbox commit -> handler commit)"),
    ("write", "  write     (scheduled -> outbox commit)"),
    ("relay", "  relay     (outbox commit -> transport ack)"),
    ("transport", "  transport (ack -> consumer poll returns it)"),
    ("consume", "  consume   (poll -> handler commit)"),
)


def report(result: dict[str, Any]) -> str:
    env = result["environment"]
    kafka = f"Kafka {env['kafka']}, " if result["transport"] == "kafka" else ""
    lines = [
        "",
        f"== {result['transport']} ==  PostgreSQL {env['postgresql']} (durable), {kafka}"
        f"Python {env['python']}, {env['cpus']} CPUs",
    ]
    if tp := result.get("throughput"):
        pipe = tp["pipeline"]
        lines += [
            f"Throughput: {tp['events']:,} events, {tp['events_per_transaction']} per writer transaction"
            f"{'CPU ms/event':>29}",
            f"  {'':44}{'events/s':>10}{'seconds':>9}{'service':>10}{'consumer':>10}",
            _rate_row("pipeline (write + relay + consume at once)", pipe),
            _rate_row("  writer alone", tp["writer_alone"]),
            _rate_row("  relay alone (drains the outbox backlog)", tp["relay_alone"]),
            _rate_row("  consumer alone (drains the topic)", tp["consumer_alone"]),
            f"  pipeline: writer done after {pipe['writer_done_after_s']:.2f} s; mean batch "
            f"{pipe['mean_relay_batch']:.0f} per publish, {pipe['mean_consumer_batch']:.0f} per poll; "
            f"machine CPUs {pipe['machine_busy_percent']:.0f}% busy",
            "  CPU: user + system, all threads, of the service process (writer + relay) and the consumer's",
        ]
    if lat := result.get("latency"):
        sustained = lat["sustained"]
        lines += [
            f"Latency: open loop, {lat['rate']:g} events/s for {lat['seconds']:g} s "
            f"({lat['events']:,} events, 1 per transaction)",
            f"  sustained {sustained['events_per_second']:,.0f} events/s; CPU ms/event: service "
            f"{sustained['service_cpu_ms_per_event']:.2f}, "
            f"consumer {sustained['consumer_cpu_ms_per_event']:.2f}; "
            f"machine CPUs {sustained['machine_busy_percent']:.0f}% busy; mean batch "
            f"{lat['mean_relay_batch']:.1f} per publish, {lat['mean_consumer_batch']:.1f} per poll",
            f"  {'ms':<46}" + "".join(f"{h:>9}" for h in ("p50", "p90", "p99", "p99.9", "max")),
        ]
        for key, label in LATENCY_ROWS:
            d = lat["ms"][key]
            cells = "".join(f"{d[k]:9.1f}" for k in ("p50", "p90", "p99", "p99_9", "max"))
            lines.append(f"  {label:<46}{cells}")
    return "\n".join(lines)


def _rate_row(label: str, figures: dict[str, float]) -> str:
    return (
        f"  {label:<44}{figures['events_per_second']:>10,.0f}{figures['seconds']:>9.2f}"
        f"{figures['service_cpu_ms_per_event']:>10.2f}{figures['consumer_cpu_ms_per_event']:>10.2f}"
    )


def summary(results: list[dict[str, Any]]) -> str:
    rows = [
        ("throughput, events/s", ("throughput", "pipeline", "events_per_second"), ",.0f"),
        ("  relay alone, events/s", ("throughput", "relay_alone", "events_per_second"), ",.0f"),
        ("  consumer alone, events/s", ("throughput", "consumer_alone", "events_per_second"), ",.0f"),
        *(
            (f"latency {q}, ms", ("latency", "ms", "end_to_end", key), ".1f")
            for q, key in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p99_9"), ("max", "max"))
        ),
    ]
    lines = ["", "== summary ==", f"  {'':28}" + "".join(f"{r['transport']:>12}" for r in results)]
    for label, path, fmt in rows:
        cells = []
        for result in results:
            value: Any = result
            for key in path:
                value = value.get(key, {}) if isinstance(value, dict) else {}
            cells.append(format(value, fmt) if isinstance(value, int | float) else "-")
        lines.append(f"  {label:<28}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def save(result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"events-{result['transport']}.json"
    clean = json.loads(json.dumps(result), parse_constant=lambda _: None)  # NaN -> null
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


# -- infrastructure and entry point ----------------------------------------------------------------------


@dataclass(frozen=True)
class Args:
    transports: tuple[str, ...]
    events: int
    rate: float
    seconds: float
    relay_batch: int
    consumer_batch: int


def parse_args(argv: Sequence[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("pglog", "kafka", "both"), default="both")
    parser.add_argument("--events", type=int, default=10_000, help="events in the throughput runs (0: skip)")
    parser.add_argument("--rate", type=float, default=500, help="events/s in the latency run (0: skip)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    parser.add_argument("--relay-batch", type=int, default=500, help="Relay(batch_size=...)")
    parser.add_argument("--consumer-batch", type=int, default=200, help="Consumer(batch_size=...)")
    ns = parser.parse_args(argv)
    transports = ("pglog", "kafka") if ns.transport == "both" else (ns.transport,)
    return Args(transports, ns.events, ns.rate, ns.seconds, ns.relay_batch, ns.consumer_batch)


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(folder / "postgres", free_port())  # durable: PostgreSQL's default settings
    try:
        print(f"starting PostgreSQL on port {server.port} ...", file=sys.stderr)
        server.start()
        yield server
    finally:
        server.stop("immediate")  # a throwaway server: no need for a shutdown checkpoint


@contextlib.contextmanager
def kafka(folder: Path) -> Iterator[KafkaBroker]:
    ensure_jars()
    broker = KafkaBroker(folder / "kafka")
    try:
        print("starting Kafka ...", file=sys.stderr)
        broker.start()
        yield broker
    finally:
        broker.stop()


def kafka_version() -> str:
    jar = next(LIB_DIR.glob("kafka_2.13-*.jar"), None)
    return jar.stem.split("-", 1)[1] if jar else "?"


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, where SIGTERM cancels the work as Ctrl-C does, so that every `finally` runs."""

    async def cancellable() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await work

    try:
        return asyncio.run(cancellable())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # the loop's exit reset it


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # kafka-python is noisy about every reconnect
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    results: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-events-")))
            pg = stack.enter_context(postgres(folder))
            environment = {
                "postgresql": pg.psql("SHOW server_version").strip(),
                "python": platform.python_version(),
                "cpus": str(os.cpu_count()),
            }
            for name in args.transports:
                bootstrap = None
                if name == "kafka":
                    bootstrap = stack.enter_context(kafka(folder)).bootstrap
                    environment = {**environment, "kafka": kafka_version()}
                url = pg.create_database(f"bench_{name}")
                upgrade(url)
                setup = Setup(name, url, bootstrap, args.relay_batch, args.consumer_batch)
                print(f"benchmarking {name} ...", file=sys.stderr)
                result = run_async(run_transport(setup, args, environment))
                results.append(result)
                print(report(result), flush=True)
                print(f"  (saved to {save(result)})", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; everything started here has been stopped", file=sys.stderr)
        return 130
    if len(results) > 1:
        print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
