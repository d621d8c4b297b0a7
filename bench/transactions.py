"""Benchmark of the transactions feed: events folded into the feed per second on each transport, and
GET /transactions latency on an account with 10,000 transactions.

    .venv/bin/python -m bench.transactions [--transport pglog|kafka|both] [--payments 2000]
                                           [--feed-size 10000] [--requests 1000]

Everything is real and thrown away afterwards: a durable PostgreSQL (fsync on) in a temporary folder,
one database per transport migrated with `bank.migrate.upgrade`, and for Kafka a KRaft broker.

* Consume. `--payments` card payments over 200 accounts, each a full story as accounts and cards tell
  it: approval, hold placed, clearing (3 events), plus one account.created per account, are published
  onto the real topics first. Then the service's own consumer (`transactions.feed`, its real batch
  handler with the per-event handlers as fallback: fold, merchant directory, balances, spend today,
  announcements into the outbox) works through them.
  events/s = events / (first poll -> last event committed). The relay is not running.
* Read. An account with `--feed-size` transactions (written with SQL from folded events, as the
  consumer would leave them), the service on uvicorn in its own process, and `--requests` sequential
  GET /transactions?limit=100 over one keep-alive connection, each from a random `since` cursor;
  latency is client-side (request sent -> body read), p50/p99/max, with and without expand[]=merchant.

Figures go to stdout and to bench/results/transactions.json. Nothing is asserted. On 2 cores the load
generator, the service and PostgreSQL share the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, insert, select, text

from bank.infra.kafka import KafkaBroker, ensure_jars
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade
from services.transactions.consumers import TOPICS, FeedProjector, transaction_id
from services.transactions.feed import Fact, fold, spend_day
from services.transactions.merchants import profile
from services.transactions.models import Merchant, Owner, Transaction, TransactionRow
from services.transactions.publish import Announcer
from services.transactions.render import merchant_doc, transaction_json
from shared import topics
from shared.auth import SigningKey
from shared.config import BankSettings
from shared.db import Database
from shared.events import make_transport
from shared.events.consumer import Consumer
from shared.events.envelope import Envelope
from shared.events.outbox import Outbox
from shared.events.tables import event_tables
from shared.events.transports.base import OutgoingRecord

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ACCOUNTS = 200
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
MERCHANT = {"id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London", "country": "GB",
            "postcode": "N1 3JD"}  # fmt: skip
LOGOS = "https://logos.bench/m"


def envelope(source: str, event_type: str, account_id: str, data: dict[str, Any], at: datetime) -> Envelope:
    return Envelope(
        id=os.urandom(12).hex(), source=f"/services/{source}", type=event_type, time=at, subject=account_id,
        data={"account_id": account_id, **data},
    )  # fmt: skip


def payment_story(n: int) -> list[tuple[str, Envelope]]:
    account = f"acc_bench{n % ACCOUNTS}"
    at = T0 + timedelta(seconds=n)
    amount = 100 + n % 900
    card: dict[str, Any] = {
        "card_id": "card_1", "card_last4": "4242", "amount": amount, "currency": "GBP",
        "merchant": MERCHANT, "network_transaction_id": f"NTX{n:09d}", "processing_code": "000000",
        "authorisation_id": f"auth_bench{n:09d}", "stan": "000001", "rrn": "000000000001",
    }  # fmt: skip
    hold = {"amount": -amount, "currency": "GBP", "balance": 10**6, "available": 10**6 - n,
            "hold_id": f"hold_{n}", "network_txn_id": card["network_transaction_id"]}  # fmt: skip
    approved = {**card, "response_code": "00", "approval_code": "A1", "held_amount": card["amount"]}
    settled = {**card, "presentment_id": f"P{n:09d}", "authorised_amount": card["amount"], "forced": False,
               "exceeds_tolerance": False}  # fmt: skip
    return [
        (topics.LEDGER, envelope("accounts", "account.hold.placed", account, hold, at)),
        (topics.CARD_AUTHORISATIONS, envelope("cards", "card.authorisation.approved", account, approved, at)),
        (topics.CARD_AUTHORISATIONS, envelope("cards", "card.transaction.settled", account, settled, at)),
    ]


async def consume_benchmark(settings: BankSettings, payments: int) -> dict[str, Any]:
    owners = [
        (topics.ACCOUNTS, envelope("accounts", "account.created", f"acc_bench{i}",
                                       {"user_id": f"user_b{i}", "currency": "GBP"}, T0))
        for i in range(ACCOUNTS)
    ]  # fmt: skip
    stories = owners + [e for n in range(payments) for e in payment_story(n)]
    publisher = make_transport(settings, client_id="bench-publisher")
    await publisher.start()
    for i in range(0, len(stories), 1_000):
        chunk = stories[i : i + 1_000]
        await publisher.publish([OutgoingRecord(t, e.subject, e.to_json().encode()) for t, e in chunk])
    await publisher.close()
    db = Database(settings.database_url, pool_size=4, application_name="bench-transactions")
    transport = make_transport(settings, client_id="transactions")
    await transport.start()
    projector = FeedProjector(Announcer(Outbox("transactions")), LOGOS)
    consumer = Consumer(
        "transactions.feed", service="transactions", db=db, transport=transport,
        handlers=projector.handlers(), topics=TOPICS, batch_size=200, batch_handler=projector.on_batch,
    )  # fmt: skip
    inbox = event_tables("transactions").inbox
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    try:
        while True:
            async with db.read() as session:
                done = int(await session.scalar(select(func.count()).select_from(inbox)) or 0)
            if done >= len(stories):
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()
    outbox = event_tables("transactions").outbox
    async with db.read() as session:
        announced = int(await session.scalar(select(func.count()).select_from(outbox)) or 0)
    await db.dispose()
    return {
        "transport": settings.transport, "events": len(stories), "payments": payments, "accounts": ACCOUNTS,
        "seconds": round(elapsed, 2), "events_per_second": round(len(stories) / elapsed),
        "announcements": announced,
    }  # fmt: skip


# -- reads ---------------------------------------------------------------------------------------------


async def seed_feed(url: str, size: int) -> str:
    """One account with `size` settled card payments, written as the consumer would leave them."""
    account, user = "acc_bigfeed", "user_bigfeed"
    p = profile("BB0001", MERCHANT["name"], "5814", "London", "GB", "N1 3JD", LOGOS)
    db = Database(url, pool_size=2, application_name="bench-seed")
    async with db.transaction() as session:
        await session.execute(
            insert(Merchant).values(
                id=p.id, group_id=p.group_id, network_id="BB0001", raw_name=MERCHANT["name"], name=p.name,
                mcc=p.mcc, category=p.category, emoji=p.emoji, logo=p.logo, online=p.online, atm=p.atm,
                address=p.address, doc=merchant_doc(p), created=T0, updated=T0,
            )
        )  # fmt: skip
        await session.execute(insert(Owner).values(account_id=account, user_id=user, currency="GBP"))
        rows = []
        for n in range(size):
            card_events = [e for _, e in payment_story(n) if e.type.startswith("card.")]
            facts = [Fact(e.id, e.type, e.time, {**e.data, "account_id": account}) for e in card_events]
            item = fold(facts)
            assert item is not None
            tx = TransactionRow(
                id=transaction_id(item.key), source_key=item.key, account_id=account, user_id=user,
                created=item.created, updated=item.updated, kind=item.kind, item=item.to_json(),
                merchant_id=p.id, category=p.category, balance_refs=list(item.balance_refs),
                account_balance=10**6 - n, balance_matched=True, spend_day=spend_day(item.created),
                spend_amount=-item.amount, notes="", metadata={}, annotated=None, version=2, announced=True,
            )  # fmt: skip
            row = asdict(tx)
            row["metadata_"] = row.pop("metadata")
            rows.append({**row, "body": transaction_json(tx, item)})
        for i in range(0, len(rows), 1_000):
            await session.execute(insert(Transaction), rows[i : i + 1_000])
        # Planner statistics, as autovacuum keeps them on a live table (a bulk load is read before
        # autovacuum gets to it, and without them the keyset page is planned as a bitmap scan + sort).
        await session.execute(text("ANALYZE transactions.transactions"))
    await db.dispose()
    return account


def serve_transactions(url: str, port: int, public_jwk: dict[str, str]) -> None:
    """Child process: the transactions service, tokens checked against the bench's key."""
    import uvicorn

    from services.transactions.app import create_app
    from shared.auth import TokenVerifier, public_keys_from_jwks
    from shared.runtime import Runtime

    settings = BankSettings(database_url=url, log_json=False, log_level="WARNING",
                            accounts_url=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    app = create_app(Runtime("transactions", settings))
    keys = public_keys_from_jwks({"keys": [public_jwk]})

    async def lookup(kid: str) -> Any:
        return keys.get(kid)

    app.state.token_verifier = TokenVerifier(lookup)
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def percentile(sorted_ms: list[float], q: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 2)


async def read_benchmark(url: str, size: int, requests: int) -> dict[str, Any]:
    account = await seed_feed(url, size)
    key = SigningKey.generate()
    port = free_port()
    child = multiprocessing.get_context("spawn").Process(
        target=serve_transactions, args=(url, port, key.public_jwk()), daemon=True
    )
    child.start()
    try:
        headers = {"Authorization": f"Bearer {key.issue('user_bigfeed', 'bench', 3600)[0]}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as http:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            cursors = await all_ids(http, account)
            assert len(cursors) == size, "the seeded feed is not served whole"
            result: dict[str, Any] = {"feed_size": size, "page": 100, "requests": requests}
            for label, extra in (("ids", {}), ("expanded", {"expand[]": "merchant"})):
                timings = []
                for _ in range(requests):
                    params = {"account_id": account, "limit": "100", "since": random.choice(cursors), **extra}
                    start = time.perf_counter()
                    r = await http.get("/transactions", params=params)
                    r.read()
                    timings.append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200, r.text
                timings.sort()
                result[label] = {"p50_ms": percentile(timings, 0.5), "p99_ms": percentile(timings, 0.99),
                                 "max_ms": round(timings[-1], 2)}  # fmt: skip
            return result
    finally:
        child.terminate()
        child.join(10)


async def all_ids(http: httpx.AsyncClient, account: str) -> list[str]:
    ids: list[str] = []
    params = {"account_id": account, "limit": "100"}
    while True:
        page = (await http.get("/transactions", params=params)).json()["transactions"]
        if not page:
            return ids
        ids += [t["id"] for t in page]
        params["since"] = ids[-1]


# -- running ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(folder / "pg", free_port(), durable=True)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop("fast")


@contextlib.contextmanager
def kafka(folder: Path) -> Iterator[KafkaBroker]:
    ensure_jars()
    broker = KafkaBroker(folder / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=("pglog", "kafka", "both"), default="both")
    parser.add_argument("--payments", type=int, default=2_000)
    parser.add_argument("--feed-size", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1_000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    transports = ("pglog", "kafka") if args.transport == "both" else (args.transport,)
    result: dict[str, Any] = {
        "benchmark": "transactions",
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        },
        "consume": [],
    }
    try:
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-transactions-")))
            pg = stack.enter_context(postgres(folder))
            for transport in transports:
                url = pg.create_database(f"bench_tx_{transport}")
                upgrade(url)
                settings = BankSettings(database_url=url, log_json=False)
                settings = settings.model_copy(update={"transport": transport})
                if transport == "kafka":
                    broker = stack.enter_context(kafka(folder))
                    settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
                print(f"consuming {args.payments} payments on {transport} ...", file=sys.stderr)
                figures = asyncio.run(consume_benchmark(settings, args.payments))
                result["consume"].append(figures)
                print(f"  {transport}: {figures['events']} events in {figures['seconds']} s = "
                      f"{figures['events_per_second']} events/s into the feed", flush=True)  # fmt: skip
            url = pg.create_database("bench_tx_reads")
            upgrade(url)
            print(f"reading pages of 100 from a {args.feed_size}-transaction account ...", file=sys.stderr)
            reads = asyncio.run(read_benchmark(url, args.feed_size, args.requests))
            result["read"] = reads
            for label in ("ids", "expanded"):
                r = reads[label]
                print(f"  GET /transactions limit=100 ({label}): p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                      f"max {r['max_ms']} ms over {args.requests} requests", flush=True)  # fmt: skip
    except KeyboardInterrupt:
        print("\ninterrupted; everything started here has been stopped", file=sys.stderr)
        return 130
    result["environment"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "transactions.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  (saved to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
