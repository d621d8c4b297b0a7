"""Benchmark of webhook delivery: transaction.created committed -> webhooks -> a fast local receiver.

    .venv/bin/python -m bench.webhooks [--webhooks 1000] [--events 5000] [--rate 100] [--rate-seconds 20]
                                       [--backlog 5000] [--profile FILE]  # FILE: the service's cProfile

Embedded mode: a durable PostgreSQL (default settings, fsync on) in a temporary folder, migrated; the
webhooks service as its own process (`python -m services.webhooks`, pglog transport, its consumer, worker
pool and recorder); this process plays the transactions service (commits `transaction.created` with
`Outbox("transactions").emit`, its `Relay` publishes) and the receiver (a minimal HTTP/1.1 keep-alive
server on asyncio streams that answers 200 at once). `--webhooks` accounts each get one webhook (seeded
with SQL, secrets sealed as the service seals them), all pointing at the receiver.

* Throughput: `--events` events, 50 per producer transaction, round-robin over the accounts, written as
  fast as possible; deliveries/s = events / (first commit -> the receiver has seen every webhook-id).
* Latency: open loop, `--rate` events/s for `--rate-seconds`, one per transaction, each on a random
  account; latency = the receiver's 200 - that event's commit (the same clock: one process).
* Drain: `--backlog` pending deliveries committed at once straight into `webhooks.deliveries` (COPY, as
  the consumer would write them), round-robin over the webhooks; deliveries/s = backlog / (commit -> the
  receiver has seen every one). The delivery engine alone: no producer, relay or consumer in the way.

The throughput and latency figures come with CPU ms per event: user + system CPU over the phase, of the
webhooks process (consumer, worker pool, recorder) and of all of PostgreSQL (which also serves this
process's outbox writes and relay).

Figures go to stdout and bench/results/webhooks.json. Nothing is asserted. On 2 cores PostgreSQL, the
service and this process share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade
from bench.notifications import cpu_seconds
from services.transactions.events import TransactionCreated
from services.webhooks.config import WebhooksSettings, decode_key
from services.webhooks.signing import SecretBox, new_secret
from shared import topics
from shared.config import BankSettings, to_libpq
from shared.db import Database
from shared.events import make_transport
from shared.events.outbox import Outbox
from shared.events.relay import Relay
from shared.ids import new_id

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROFILED_SERVICE = """
import cProfile, runpy, sys, threading, time
out, profile = sys.argv[1], cProfile.Profile()
def dump():
    while True:
        time.sleep(10)
        profile.dump_stats(out)
threading.Thread(target=dump, daemon=True).start()
sys.argv = ["services.webhooks"]
profile.enable()
try:
    runpy.run_module("services.webhooks", run_name="__main__")
finally:
    profile.disable()
    profile.dump_stats(out)
"""
clock = time.perf_counter


def event(i: int, account: int) -> TransactionCreated:
    now = datetime.now(UTC).isoformat()
    tx = {
        "id": f"tx_bench{i}",
        "account_id": f"acc_w{account}",
        "amount": -1915,
        "currency": "GBP",
        "created": now,
        "description": "BRIGHTBIRD ESPRESSO LONDON GBR",
        "category": "eating_out",
        "settled": "",
        "notes": "",
        "metadata": {},
        "merchant": {"id": "merch_bench", "name": "Brightbird Espresso", "emoji": "☕"},
    }
    return TransactionCreated.model_validate(
        {
            "account_id": f"acc_w{account}",
            "user_id": f"user_w{account}",
            "kind": "card_payment",
            "change": "created",
            "tx_version": 1,
            "spend_today": {"amount": 1915, "currency": "GBP"},
            "transaction": tx,
        }
    )


class FastReceiver:
    """HTTP/1.1 with keep-alive on asyncio streams: reads the request, answers 200 at once."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.seen: dict[str, float] = {}  # webhook-id -> time received
        self.tx_at: dict[str, float] = {}  # transaction id -> time received (first)
        self.requests = 0
        self.changed = asyncio.Event()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, backlog=1024)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    if b":" in line:
                        k, v = line.split(b":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                now = clock()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                self.requests += 1
                self.seen.setdefault(headers[b"webhook-id"].decode(), now)
                tx_id = json.loads(body)["data"]["id"]
                self.tx_at.setdefault(tx_id, now)
                self.changed.set()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def until(self, done: Any, timeout: float) -> None:
        deadline = clock() + timeout
        while not done():
            self.changed.clear()
            if clock() > deadline:
                raise TimeoutError("the receiver did not get everything in time")
            try:
                await asyncio.wait_for(self.changed.wait(), 1.0)
            except TimeoutError:
                pass


async def seed(url: str, count: int, receiver_url: str) -> None:
    box = SecretBox(decode_key(WebhooksSettings().secret_key))
    rows = []
    for i in range(count):
        wid = f"webhook_w{i}"
        rows.append((wid, f"acc_w{i}", f"user_w{i}", receiver_url, box.seal(wid, new_secret()), "active"))
    conn = await asyncpg.connect(to_libpq(url))
    try:
        await conn.copy_records_to_table(
            "webhooks",
            schema_name="webhooks",
            records=rows,
            columns=("id", "account_id", "user_id", "url", "secret", "status"),
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def write_backlog(url: str, count: int, webhooks: int) -> list[str]:
    """`count` pending deliveries, round-robin over the webhooks, in one transaction (COPY)."""
    rows, ids = [], []
    now = datetime.now(UTC)
    for i in range(count):
        account = i % webhooks
        tx = event(-(10**7 + i), account).transaction
        payload = json.dumps({"type": "transaction.created", "data": tx})
        delivery_id = new_id("msg")
        ids.append(delivery_id)
        rows.append((delivery_id, f"webhook_w{account}", f"acc_w{account}", f"evt_backlog{i}",
                     "transaction.created", now, payload))  # fmt: skip
    conn = await asyncpg.connect(to_libpq(url))
    try:
        await conn.copy_records_to_table(
            "deliveries",
            schema_name="webhooks",
            records=rows,
            columns=("id", "webhook_id", "account_id", "event_id", "event_type", "event_time", "payload"),
        )
    finally:
        await conn.close()
    return ids


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    server = EmbeddedPostgres(folder / "postgres", free_port())
    proc: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        url = server.create_database("bank")
        upgrade(url)
        receiver = FastReceiver()
        await receiver.start()
        await seed(url, args.webhooks, receiver.url)

        port = free_port()
        env = {
            **os.environ,
            "BANK_DATABASE_URL": url,
            "BANK_TRANSPORT": "pglog",
            "BANK_WEBHOOKS_URL": f"http://127.0.0.1:{port}",
            "BANK_LOG_LEVEL": "WARNING",
            "WEBHOOKS_ALLOW_HTTP": "true",
            "WEBHOOKS_ALLOW_NETWORKS": '["127.0.0.1/32"]',
        }
        log = (folder / "webhooks.log").open("wb")
        command = [sys.executable, "-m", "services.webhooks"]
        if args.profile:  # the service under cProfile, its stats written every 10 s and at the end
            command = [sys.executable, "-c", PROFILED_SERVICE, args.profile]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)  # noqa: ASYNC220
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)

        bank = BankSettings(database_url=url, relay_poll_seconds=0.05)
        db = Database(url, pool_size=8, application_name="bench-producer")
        transport = make_transport(bank, client_id="transactions-bench")
        await transport.start()
        outbox = Outbox("transactions")
        relay = Relay(db, outbox, transport, poll_seconds=0.05)
        relay_task = asyncio.create_task(relay.run())
        committed: dict[str, float] = {}

        async def write(batch: list[tuple[int, int]]) -> None:
            async with db.transaction() as session:
                for i, account in batch:
                    await outbox.emit(session, topics.TRANSACTIONS_FEED, f"acc_w{account}", event(i, account))
            now = clock()
            for i, _ in batch:
                committed[f"tx_bench{i}"] = now

        # Warm-up: every connection and the consumer's partitions.
        warm = [(-(k + 1), k % args.webhooks) for k in range(50)]
        await write(warm)
        await receiver.until(lambda: len(receiver.tx_at) >= 50, 120)

        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])

        def cpu_now() -> tuple[float, float]:
            assert proc is not None
            return cpu_seconds(proc.pid), cpu_seconds(postmaster, descendants=True)

        def cpu_ms_per_event(since: tuple[float, float], events: int) -> dict[str, float]:
            now = cpu_now()
            return {
                "service_cpu_ms_per_event": round((now[0] - since[0]) * 1000 / events, 3),
                "postgres_cpu_ms_per_event": round((now[1] - since[1]) * 1000 / events, 3),
            }

        # Throughput.
        n = args.events
        seen_before = len(receiver.seen)
        cpu_at = cpu_now()
        started = clock()
        for first in range(0, n, 50):
            await write([(i, i % args.webhooks) for i in range(first, min(n, first + 50))])
        written = clock()
        await receiver.until(lambda: len(receiver.seen) - seen_before >= n, 600)
        elapsed = clock() - started
        throughput = {
            "events": n,
            "webhooks": args.webhooks,
            "write_seconds": round(written - started, 3),
            "seconds": round(elapsed, 3),
            "deliveries_per_second": round(n / elapsed, 1),
            "requests_received": receiver.requests - len(warm),
            **cpu_ms_per_event(cpu_at, n),
        }
        print(
            f"throughput: {n} deliveries to {args.webhooks} webhooks in {elapsed:.2f}s = "
            f"{n / elapsed:,.0f} deliveries/s (written in {written - started:.2f}s; "
            f"{throughput['requests_received']} requests received); CPU ms per event: webhooks "
            f"{throughput['service_cpu_ms_per_event']}, PostgreSQL {throughput['postgres_cpu_ms_per_event']}"
        )

        # Latency at an offered rate.
        total = int(args.rate * args.rate_seconds)
        base = n + 1_000_000
        cpu_at = cpu_now()
        start = clock()
        tasks = []
        slots = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with slots:
                await write([(i, random.randrange(args.webhooks))])

        for k in range(total):
            due = start + k / args.rate
            await asyncio.sleep(max(0.0, due - clock()))
            tasks.append(asyncio.create_task(one(base + k)))
        await asyncio.gather(*tasks)
        ids = [f"tx_bench{base + k}" for k in range(total)]
        await receiver.until(lambda: all(i in receiver.tx_at for i in ids), 600)
        lat = sorted((receiver.tx_at[i] - committed[i]) * 1000 for i in ids)
        latency = {
            "rate": args.rate,
            "events": total,
            "p50_ms": round(percentile(lat, 50), 1),
            "p95_ms": round(percentile(lat, 95), 1),
            "p99_ms": round(percentile(lat, 99), 1),
            "max_ms": round(lat[-1], 1),
            **cpu_ms_per_event(cpu_at, total),
        }
        print(
            f"latency at {args.rate:g} events/s for {args.rate_seconds:g}s, commit -> receiver's 200: "
            f"p50 {latency['p50_ms']} ms, p95 {latency['p95_ms']} ms, p99 {latency['p99_ms']} ms, "
            f"max {latency['max_ms']} ms; CPU ms per event: webhooks {latency['service_cpu_ms_per_event']}, "
            f"PostgreSQL {latency['postgres_cpu_ms_per_event']}"
        )
        # Delivery alone: a backlog of deliveries committed at once (as the consumer writes them, without
        # the producer, relay and consumer in the way), drained by the worker pool.
        backlog = await write_backlog(url, args.backlog, args.webhooks)
        started = clock()
        await receiver.until(lambda: all(i in receiver.seen for i in backlog), 600)
        drained = clock() - started
        drain = {"deliveries": len(backlog), "seconds": round(drained, 3)}
        drain["deliveries_per_second"] = round(len(backlog) / drained, 1)
        print(
            f"drain: a backlog of {len(backlog)} deliveries over {args.webhooks} webhooks in {drained:.2f}s "
            f"= {len(backlog) / drained:,.0f} deliveries/s"
        )
        duplicates = receiver.requests - len(receiver.seen)
        print(f"requests: {receiver.requests} for {len(receiver.seen)} deliveries ({duplicates} sent twice)")
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
        await transport.close()
        await db.dispose()
        return {
            "when": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "throughput": throughput,
            "latency": latency,
            "drain": drain,
            "requests": {"received": receiver.requests, "deliveries": len(receiver.seen)},
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--rate-seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=5000, help="deliveries drained at the end")
    parser.add_argument("--profile", default="", help="write the service's cProfile stats to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "webhooks.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS_DIR / 'webhooks.json'}")


if __name__ == "__main__":
    main()
