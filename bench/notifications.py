"""Benchmark of the product's headline figure: card payment approved -> the phone's provider has the push.

    .venv/bin/python -m bench.notifications [--transport pglog,kafka] [--rate 100] [--seconds 20]
                                            [--users 1000] [--platforms apns] [--profile DIR]
                                            [--spy DIR]

Laid out as `bank up` runs it: a durable PostgreSQL in a temporary folder, migrated; for Kafka a KRaft
broker in a temporary folder; the fake APNs/FCM (`python -m services.notifications.providers.fake`) and
the notifications service (`python -m services.notifications`) each in its own process. `--users`
customers each have one device (seeded with SQL), of the `--platforms` in turn (`apns,fcm`: alternately,
as in bench.whole_bank).

This process plays the producer of `transactions.feed`: open loop at `--rate` events/s for `--seconds`,
each a card payment written with `Outbox("transactions").emit` in its own transaction, published by a
`Relay` woken in-process (as in every service). An event's clock starts at its scheduled time, which
stands for the cards service's commit of the approval (the transactions service's fold, one more
relay + consumer hop, is not in this figure; see docs/services/notifications.md). It stops when the
fake provider records the push (its own clock; same machine). Latency = received - scheduled. CPU per
event: user + system CPU from the start of the open loop until every push is answered, of the
notifications process, of all of PostgreSQL (which also serves this process's outbox writes and relay)
and of the fake provider (the stand-in for Apple's and Google's servers), divided by the events sent.
With one device per customer an event is one push. `--spy DIR` samples the notifications process and the
fake with py-spy over the open loop (`--format raw`, DIR/<process>-<transport>.spy.txt).

Figures go to stdout and bench/results/notifications-<transport>.json. Nothing is asserted.

    .venv/bin/python -m bench.notifications --sender-only [--batch 18] [--users 4000] [--rounds 3]

The send path alone: `--users` due deliveries (one per device, APNs and FCM alternately) inserted with
SQL, then drained by `Sender.send_batch` (batches of `--batch`, one at a time) in this process on
uvloop, against the fake in its own process; CPU per push of this process and of the fake, per round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from sqlalchemy import text

from bank.infra.kafka import KafkaBroker, ensure_jars
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade
from services.transactions.events import TransactionCreated
from shared import topics
from shared.config import BankSettings, to_libpq
from shared.db import Database
from shared.events import make_transport
from shared.events.outbox import Outbox
from shared.events.relay import Relay

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def seed(url: str, users: int, platforms: list[str]) -> None:
    conn = await asyncpg.connect(to_libpq(url))
    try:
        await conn.execute(
            """INSERT INTO notifications.devices (id, user_id, platform, token)
               SELECT 'device_b' || i, 'user_b' || i, p,
                      CASE p WHEN 'apns' THEN md5(i::text) || md5('x' || i::text)
                             ELSE 'fcm-' || md5(i::text) || ':APA91b' END
               FROM generate_series(1, $1::int) i,
                    LATERAL (SELECT ($2::text[])[1 + i % cardinality($2::text[])] AS p) x""",
            users,
            platforms,
        )
    finally:
        await conn.close()


def cpu_seconds(pid: int, *, descendants: bool = False) -> float:
    """User + system CPU seconds of a process; with `descendants`, also of its children, live and exited
    (the postmaster: all of PostgreSQL)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *(root.children(recursive=True) if descendants else ())]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + (t.children_user + t.children_system if descendants else 0)
    return total


def serve_profiled(out: str) -> None:
    """`python -m services.notifications` under cProfile; the stats are written to `out` on SIGTERM
    (uvicorn re-raises the signal after its graceful shutdown, to the handler installed here)."""
    import cProfile
    import runpy
    import signal

    profiler = cProfile.Profile()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    profiler.enable()
    runpy.run_module("services.notifications", run_name="__main__")


def spy(pids: dict[str, int], seconds: float, out: Path, transport: str) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process for `seconds` (sampling: it does not slow the process as cProfile does)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        command = [py_spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200",
                   "-f", "raw", "-o", str(out / f"{name}-{transport}.spy.txt"), "--nonblocking",
                   "--full-filenames"]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready")
            await asyncio.sleep(0.1)


def event(i: int, users: int) -> tuple[str, TransactionCreated]:
    n = i % users + 1
    account = f"acc_b{n}"
    tx = {
        "id": f"tx_bench_{i}",
        "account_id": account,
        "amount": -1915,
        "currency": "GBP",
        "merchant": {"id": "merch_1", "name": "Brightbird Espresso", "emoji": "☕"},
        "description": "BRIGHTBIRD ESPRESSO",
        "account_balance": 10_000,
        "settled": "",
    }
    data = TransactionCreated.model_validate(
        {
            "account_id": account,
            "user_id": f"user_b{n}",
            "kind": "card_payment",
            "change": "created",
            "tx_version": 1,
            "spend_today": {"amount": 4355, "currency": "GBP"},
            "transaction": tx,
        }
    )
    return account, data


async def run_one(
    transport: str, url: str, bootstrap: str | None, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    await seed(url, args.users, args.platforms.split(","))
    fake_port, service_port = free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    env = dict(
        os.environ,
        BANK_DATABASE_URL=url,
        BANK_TRANSPORT=transport,
        BANK_NOTIFICATIONS_URL=f"http://127.0.0.1:{service_port}",
        BANK_LOG_LEVEL="WARNING",
        NOTIFICATIONS_APNS_URL=fake_url,
        NOTIFICATIONS_FCM_URL=fake_url,
        NOTIFICATIONS_FCM_TOKEN_URI=f"{fake_url}/token",
    )
    if bootstrap:
        env["BANK_KAFKA_BOOTSTRAP"] = bootstrap
    fake = start(
        [sys.executable, "-m", "services.notifications.providers.fake", "--quiet", "--port", str(fake_port)],
        {**env, "PYTHONUNBUFFERED": "1"},
        tmp / f"fake-{transport}.log",
    )
    command = ["-m", "services.notifications"]
    if args.profile:
        out = args.profile.resolve() / f"notifications-{transport}.prof"
        command = ["-c", f"from bench.notifications import serve_profiled; serve_profiled({str(out)!r})"]
    service = start([sys.executable, *command], env, tmp / f"notifications-{transport}.log")
    settings = BankSettings(
        database_url=url, transport=transport, kafka_bootstrap=bootstrap or "127.0.0.1:9092"
    )
    db = Database(url, pool_size=8, application_name="bench-producer")
    producer = make_transport(settings, client_id="bench-transactions")
    outbox = Outbox("transactions")
    relay = Relay(db, outbox, producer, poll_seconds=0.2)
    relay_task: asyncio.Task[None] | None = None
    try:
        await producer.start()
        await wait_ready(f"{fake_url}/healthz", fake, "the fake provider")
        await wait_ready(f"http://127.0.0.1:{service_port}/readyz", service, "notifications")
        relay_task = asyncio.create_task(relay.run())

        # Warm-up: one push end to end (consumer group formed, connections open).
        account, data = event(10**9, args.users)
        async with db.transaction() as s:
            await outbox.emit(s, topics.TRANSACTIONS_FEED, account, data)
        async with httpx.AsyncClient(base_url=fake_url, timeout=10, trust_env=False) as client:
            deadline = time.monotonic() + 180
            while not (await client.get("/_fake/received")).json()["received"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm-up push never arrived")
                await asyncio.sleep(0.1)
            await client.delete("/_fake/received")

            total = int(args.rate * args.seconds)
            postmaster = int((tmp / "postgres" / "postmaster.pid").read_text().split()[0])  # main()'s server
            cpu_before = (
                cpu_seconds(service.pid),
                cpu_seconds(postmaster, descendants=True),
                cpu_seconds(fake.pid),
            )
            spies = (
                spy({"notifications": service.pid, "fake": fake.pid}, args.seconds, args.spy, transport)
                if args.spy
                else []
            )
            scheduled: dict[str, float] = {}
            committed: dict[str, float] = {}
            slots = asyncio.Semaphore(16)
            start_at = time.time() + 0.2

            async def write(i: int) -> None:
                due = start_at + i / args.rate
                await asyncio.sleep(max(0.0, due - time.time()))
                account, data = event(i, args.users)
                scheduled[f"tx_bench_{i}"] = due
                async with slots, db.transaction() as s:
                    await outbox.emit(s, topics.TRANSACTIONS_FEED, account, data)
                committed[f"tx_bench_{i}"] = time.time()

            print(f"[{transport}] {total} card payments at {args.rate}/s ...", file=sys.stderr)
            await asyncio.gather(*(write(i) for i in range(total)))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # count in the database: cheap, unlike the fake's whole list
                async with db.read() as session:
                    done = await session.scalar(
                        text("SELECT count(*) FROM notifications.deliveries WHERE status <> 'pending'")
                    )
                if int(done or 0) >= total + 1:  # + the warm-up push
                    break
                await asyncio.sleep(1.0)
            service_cpu = cpu_seconds(service.pid) - cpu_before[0]
            postgres_cpu = cpu_seconds(postmaster, descendants=True) - cpu_before[1]
            fake_cpu = cpu_seconds(fake.pid) - cpu_before[2]
            for proc in spies:
                proc.wait(60)
            got = (await client.get("/_fake/received")).json()["received"]
        async with db.read() as session:
            stages = (
                await session.execute(
                    text(
                        "SELECT extract(epoch FROM created - event_time) * 1000 AS queued,"
                        " extract(epoch FROM sent_at - created) * 1000 AS sent"
                        " FROM notifications.deliveries WHERE status = 'sent' AND event_time IS NOT NULL"
                    )
                )
            ).all()
            # A transaction's rows share now(): created is the consumer's transaction, sent_at the send batch.
            batches = (
                await session.execute(
                    text(
                        "SELECT count(*)::float / count(DISTINCT created) AS queued,"
                        " count(*)::float / count(DISTINCT sent_at) AS sent"
                        " FROM notifications.deliveries WHERE status = 'sent'"
                    )
                )
            ).one()
        queued = [float(r.queued) for r in stages]
        sending = [float(r.sent) for r in stages]
        latencies, event_path = [], []
        first: dict[str, dict[str, Any]] = {}
        resent: dict[str, int] = {}  # the first attempt's answer (None: none before the client left)
        for r in sorted(got, key=lambda r: r["received_at"]):
            tx_id = r["data"].get("transaction_id")
            if tx_id not in scheduled:
                continue
            if tx_id in first:  # a resend: the latency is the first receipt's
                answered = str(first[tx_id]["status"])
                resent[answered] = resent.get(answered, 0) + 1
                continue
            first[tx_id] = r
            latencies.append((r["received_at"] - scheduled[tx_id]) * 1000)
            event_path.append((r["received_at"] - committed[tx_id]) * 1000)
        result = {
            "transport": transport,
            "platforms": args.platforms,
            "rate": args.rate,
            "seconds": args.seconds,
            "sent": total,
            "received": len(latencies),
            "resends_by_first_answer": resent,
            "latency_ms": {p: round(percentile(latencies, float(p[1:])), 1) for p in ("p50", "p95", "p99")}
            | {"max": round(max(latencies, default=float("nan")), 1)},
            "from_outbox_commit_ms": {
                p: round(percentile(event_path, float(p[1:])), 1) for p in ("p50", "p99")
            },
            "stages_ms": {
                "event_to_queued_p50_p99": [
                    round(percentile(queued, 50), 1),
                    round(percentile(queued, 99), 1),
                ],
                "queued_to_sent_p50_p99": [
                    round(percentile(sending, 50), 1),
                    round(percentile(sending, 99), 1),
                ],
            },
            "pushes_per_transaction": {"queued": round(batches.queued, 1), "sent": round(batches.sent, 1)},
            "cpu_ms_per_event": {
                "notifications": round(service_cpu * 1000 / total, 3),
                "postgres": round(postgres_cpu * 1000 / total, 3),
                "fake_provider": round(fake_cpu * 1000 / total, 3),
            },
            "load_average": os.getloadavg(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }
        return result
    finally:
        if relay_task is not None:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
        await producer.close()
        await db.dispose()
        for proc in (service, fake):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(folder / "postgres", free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")


async def drain_once(url: str, fake_url: str, fake_pid: int, args: argparse.Namespace) -> list[str]:
    from services.notifications.app import build_providers
    from services.notifications.config import NotificationsSettings
    from services.notifications.sender import Sender

    settings = NotificationsSettings(
        apns_url=fake_url, fcm_url=fake_url, fcm_token_uri=f"{fake_url}/token", send_batch_size=args.batch
    )
    db = Database(url, pool_size=2, application_name="bench-sender")
    providers = build_providers(settings)
    sender = Sender(db, providers, settings)
    conn = await asyncpg.connect(to_libpq(url))
    lines = []
    try:
        await seed(url, args.users, ["apns", "fcm"])
        for round_ in range(args.rounds + 1):  # round 0 warms up (connections, tokens, statements)
            await conn.execute(
                """INSERT INTO notifications.deliveries
                       (push_id, notification_key, device_id, user_id, kind, title, body, data, event_time)
                   SELECT gen_random_uuid(), 'bench:' || $1::int || ':' || i, 'device_b' || i, 'user_b' || i,
                          'card_payment', 'Payment',
                          '☕ £19.15 at Brightbird Espresso. You''ve spent £43.55 today.',
                          jsonb_build_object('transaction_id', 'tx_' || i, 'account_id', 'acc_b' || i), now()
                   FROM generate_series(1, CASE WHEN $1::int = 0 THEN 100 ELSE $2::int END) i""",
                round_,
                args.users,
            )  # fmt: skip
            fake_before, cpu_before, wall_before = (
                cpu_seconds(fake_pid),
                time.process_time(),
                time.monotonic(),
            )
            pushes = 0
            while claimed := await sender.send_batch():
                pushes += claimed
            cpu, fake_cpu = time.process_time() - cpu_before, cpu_seconds(fake_pid) - fake_before
            wall = time.monotonic() - wall_before
            if round_:
                lines.append(
                    f"round {round_}: {pushes} pushes in batches of {args.batch}: sender"
                    f" {cpu * 1000 / pushes:.3f} ms CPU per push,"
                    f" fake provider {fake_cpu * 1000 / pushes:.3f}; {pushes / wall:.0f}/s"
                )
                print(lines[-1], file=sys.stderr)
        statuses = await conn.fetch("SELECT status, count(*) FROM notifications.deliveries GROUP BY 1")
        lines.append("deliveries: " + ", ".join(f"{r['status']} {r['count']}" for r in statuses))
    finally:
        await conn.close()
        for provider in providers.values():
            await provider.aclose()
        await db.dispose()
    return lines


def sender_only(args: argparse.Namespace) -> int:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-sender-") as folder, postgres(Path(folder)) as pg:
        url = pg.create_database("bench_sender")
        upgrade(url)
        port = free_port()
        fake = start(
            [sys.executable, "-m", "services.notifications.providers.fake", "--quiet", "--port", str(port)],
            dict(os.environ),
            Path(folder) / "fake.log",
        )
        try:

            async def run() -> list[str]:
                await wait_ready(f"http://127.0.0.1:{port}/healthz", fake, "the fake provider")
                return await drain_once(url, f"http://127.0.0.1:{port}", fake.pid, args)

            lines = uvloop.run(run())
        finally:
            fake.terminate()
            fake.wait(20)
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", default="pglog,kafka")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--platforms", default="apns", help="apns, fcm or apns,fcm (alternately)")
    parser.add_argument(
        "--profile", type=Path, help="run the service under cProfile: DIR/notifications-<transport>.prof"
    )
    parser.add_argument(
        "--spy",
        type=Path,
        help="sample the service and the fake with py-spy: DIR/<process>-<transport>.spy.txt",
    )
    parser.add_argument("--sender-only", action="store_true", help="the send path alone (see above)")
    parser.add_argument("--batch", type=int, default=18, help="--sender-only: pushes a batch")
    parser.add_argument("--rounds", type=int, default=3, help="--sender-only: rounds of --users pushes")
    args = parser.parse_args(argv)
    if args.sender_only:
        return sender_only(args)
    RESULTS_DIR.mkdir(exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-notifications-") as folder, postgres(Path(folder)) as pg:
        for transport in args.transport.split(","):
            url = pg.create_database(f"bench_{transport}")
            upgrade(url)
            if transport == "kafka":
                ensure_jars()
                broker = KafkaBroker(Path(folder) / "kafka")
                broker.start()
                try:
                    result = asyncio.run(run_one(transport, url, broker.bootstrap, args, Path(folder)))
                finally:
                    broker.stop()
            else:
                result = asyncio.run(run_one(transport, url, None, args, Path(folder)))
            results.append(result)
            if args.profile:  # keep the processes' logs with the profile
                for log in Path(folder).glob(f"*-{transport}.log"):
                    (args.profile / log.name).write_bytes(log.read_bytes())
            (RESULTS_DIR / f"notifications-{transport}.json").write_text(json.dumps(result, indent=2))
    print("\ncard payment approved -> push received by the provider (ms)")
    print(
        f"{'transport':<10}{'rate/s':>8}{'pushes':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
        "   outbox->push p50/p99"
    )
    for r in results:
        lat, ev = r["latency_ms"], r["from_outbox_commit_ms"]
        print(
            f"{r['transport']:<10}{r['rate']:>8.0f}{r['received']:>5}/{r['sent']:<4}{lat['p50']:>8}{lat['p95']:>9}"
            f"{lat['p99']:>9}{lat['max']:>9}   {ev['p50']}/{ev['p99']}"
        )
        if r["resends_by_first_answer"]:
            print(f"  resends (by the first attempt's answer): {r['resends_by_first_answer']}")
        stages = r["stages_ms"]
        print(
            f"  stages p50/p99 (ms): event -> rows queued {stages['event_to_queued_p50_p99']}, "
            f"rows -> provider accepted {stages['queued_to_sent_p50_p99']}; "
            f"load average {[round(x, 1) for x in r['load_average']]}"
        )
        per = r["pushes_per_transaction"]
        print(f"  pushes per transaction: queued {per['queued']}, sent {per['sent']}")
        cpu = r["cpu_ms_per_event"]
        print(
            f"  CPU ms per event: notifications {cpu['notifications']}, PostgreSQL {cpu['postgres']},"
            f" fake provider {cpu['fake_provider']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
