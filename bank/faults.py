"""The faults to break a bank with on purpose, and the bank test (its runner).

The bank is `bank.cluster.BankCluster`: PostgreSQL, migrations, the fake APNs/FCM and every service
as a process that can be killed and started again, accounts behind a delaying proxy, optionally Kafka.

`FaultRunner.run(seconds)` injects, while something else drives load: a SIGKILL + restart of a random
service every `kill_every` seconds (at least `min_kills` per run), one PostgreSQL restart, one window
of delayed accounts, and one Kafka broker stop/start when there is a broker. Every fault is recorded
(what, when, how long until the bank was ready again). `quiesce` then waits until the outboxes are
published, the consumers have caught up and the background jobs are done, so `bank.checker` can
judge a settled bank.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bank.cluster import LIFTED_LIMITS, BankCluster, ledger_problems
from bank.infra.ports import free_port
from shared.config import SERVICES, to_libpq

KILLABLE = tuple(SERVICES)  # the gateway too
REPEAT_ANSWERED = ": a repeat was answered"  # the simulator's books on a repeat answered unlike its original
OUTBOX_SCHEMAS = ("accounts", "cards", "transactions", "webhooks", "notifications")


@dataclass
class Fault:
    kind: str  # kill | postgres-restart | delay | kafka-stop
    target: str
    at_s: float
    recovered_s: float | None = None  # seconds until the bank was ready again
    error: str | None = None


@dataclass
class FaultRunner:
    """Inject faults into `cluster` for a while; every fault is recorded in `faults`."""

    cluster: BankCluster
    seed: int = 1
    kill_every: float = 6.0
    min_kills: int = 2
    delay_seconds: float = 0.3
    delay_window: float = 5.0
    targets: tuple[str, ...] = KILLABLE
    faults: list[Fault] = field(default_factory=list)

    async def run(self, seconds: float) -> list[Fault]:
        rng = random.Random(self.seed)
        began = time.monotonic()
        elapsed = lambda: round(time.monotonic() - began, 2)  # noqa: E731
        # One of each rare fault, at fixed points of the run; kills fill the rest.
        once = {"postgres-restart": 0.4, "delay": 0.65}
        if self.cluster.broker is not None:
            once["kafka-stop"] = 0.25
        pending = sorted(once.items(), key=lambda kv: kv[1])
        next_kill = self.kill_every / 2
        while elapsed() < seconds:
            if pending and elapsed() >= pending[0][1] * seconds:
                kind, _ = pending.pop(0)
                await self._inject(kind, "", elapsed())
            elif elapsed() >= next_kill:
                await self._inject("kill", rng.choice(self.targets), elapsed())
                next_kill = elapsed() + self.kill_every
            else:
                await asyncio.sleep(0.2)
        for kind, _ in pending:  # a run too short to reach them still gets each rare fault once
            await self._inject(kind, "", elapsed())
        # Slow recoveries on a loaded machine can crowd the kills out of a short run: it still gets
        # `min_kills`, so every run shows a service surviving more than one crash.
        while sum(f.kind == "kill" for f in self.faults) < self.min_kills:
            await self._inject("kill", rng.choice(self.targets), elapsed())
        return self.faults

    async def _inject(self, kind: str, target: str, at: float) -> None:
        c = self.cluster
        fault = Fault(kind, target or kind, at)
        self.faults.append(fault)
        began = time.monotonic()
        try:
            if kind == "kill":
                await c.restart(target)
            elif kind == "postgres-restart":
                await c.restart_postgres()
                await c.all_ready()
            elif kind == "delay":
                if c.proxy is None:
                    fault.error = "no proxy in front of accounts"
                    return
                fault.target = f"accounts +{int(self.delay_seconds * 1000)}ms"
                c.proxy.delay = self.delay_seconds
                await asyncio.sleep(self.delay_window)
                c.proxy.delay = 0.0
            elif kind == "kafka-stop":
                assert c.broker is not None
                fault.target = "kafka broker"
                await asyncio.to_thread(c.broker.stop)
                await asyncio.sleep(self.delay_window)
                await asyncio.to_thread(c.broker.start)
            fault.recovered_s = round(time.monotonic() - began, 2)
        except Exception as exc:  # recorded; the checker judges what the bank made of it
            fault.error = f"{type(exc).__name__}: {exc}"[:500]


# Quiescence ------------------------------------------------------------------------------------

BACKLOG_SQL = {
    **{f"outbox_{s}": f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL" for s in OUTBOX_SCHEMAS},
    "pglog_lag": (
        "SELECT coalesce(sum(greatest(p.next_offset - o.next_offset, 0)), 0) "
        "FROM events.consumer_offsets o JOIN events.partitions p USING (topic, partition)"
    ),
    "compensations": "SELECT count(*) FROM cards.compensations WHERE status = 'pending'",
    "webhook_deliveries": (
        "SELECT count(*) FROM webhooks.deliveries d JOIN webhooks.webhooks w ON w.id = d.webhook_id "
        "WHERE d.status = 'pending' AND w.status = 'active'"
    ),
    "pushes": "SELECT count(*) FROM notifications.deliveries WHERE status = 'pending'",
}


async def backlog(database_url: str) -> dict[str, int | None]:
    """What is still to do in the background, per kind (None: that table does not exist yet)."""
    import asyncpg

    conn = await asyncpg.connect(to_libpq(database_url))
    try:
        out: dict[str, int | None] = {}
        for name, sql in BACKLOG_SQL.items():
            try:
                out[name] = int(await conn.fetchval(sql) or 0)
            except asyncpg.PostgresError:
                out[name] = None
        return out
    finally:
        await conn.close()


async def until_no_backlog(database_url: str, limit: float) -> dict[str, int | None]:
    """Wait until nothing is left to do in the background (or `limit` seconds); the last backlog."""
    began = time.monotonic()
    last: dict[str, int | None] = {}
    while time.monotonic() - began < limit:
        try:
            last = await backlog(database_url)
        except OSError:
            last = {}
        if last and not any(last.values()):
            break
        await asyncio.sleep(0.5)
    return last


async def quiesce(cluster: BankCluster, limit: float = 120.0) -> dict[str, Any]:
    """Wait until every service is ready and nothing is left to do in the background (or `limit`)."""
    began = time.monotonic()
    await cluster.all_ready()
    last = await until_no_backlog(cluster.database_url, max(0.0, limit - (time.monotonic() - began)))
    return {"seconds": round(time.monotonic() - began, 2), "backlog": last}


def summary(faults: list[Fault]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for f in faults:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return {
        "injected": len(faults),
        "by_kind": kinds,
        "failed_to_inject": [f.__dict__ for f in faults if f.error],
        "log": [f.__dict__ for f in faults],
    }


def dump(doc: Any) -> str:
    return json.dumps(doc, indent=1, default=str)


# The bank test ---------------------------------------------------------------------------------


class WebhookReceiver:
    """A tiny HTTP endpoint that answers 200 to every POST and records (path, webhook-id header)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[str, str]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
                }
                await r.readexactly(int(headers.get("content-length", "0") or 0))
                self.received.append((path, headers.get("webhook-id", "")))
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await w.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def _subscribe(cluster: BankCluster, receiver: WebhookReceiver, customers: list[Any]) -> dict[str, str]:
    """A webhook (to `receiver`) and a push device for each of `customers`: path -> webhook id."""
    paths: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as client:
        for i, c in enumerate(customers):
            auth = {"Authorization": f"Bearer {c.token}"}
            path = f"/hook/{i}"
            r = await client.post(
                "/webhooks", data={"account_id": c.account_id, "url": receiver.url + path}, headers=auth
            )
            if r.status_code in (200, 201):
                paths[path] = r.json()["webhook"]["id"]
            await client.post("/devices", data={"platform": "apns", "token": f"{i:02d}" * 32}, headers=auth)
    return paths


async def run_bank_test(
    folder: Path,
    *,
    seconds: float = 60.0,
    rate: float = 8.0,
    customers: int = 12,
    kafka: bool = False,
    kill_every: float = 6.0,
    seed: int = 1,
    say: Any = print,
    wire: str = "json",
) -> dict[str, Any]:
    """Start a bank, run the simulator's `day` traffic for `seconds` while FaultRunner breaks things,
    quiesce, run the checker. Returns the report: operations, faults, invariant violations. The
    traffic is the card network's messages and the customers' app calls (payments between them, pot
    deposits and withdrawals, resent with their dedupe_id when unanswered); the checker's
    `transfers_conserve` and `transfers_in_feed` judge the money those moved.
    `wire`: the network's messages as JSON through the gateway, or "iso8583" over links to cards
    (a kill of cards cuts them with messages in flight; the network repeats what went unanswered)."""
    from bank.checker import Customer, settle
    from simulator.population import seed_population
    from simulator.runner import RunConfig, run_scenario

    env = {
        "GATEWAY_RATE_LIMITS": LIFTED_LIMITS,
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_NETWORKS": '["127.0.0.1/32"]',
        "WEBHOOKS_RETRY_SCHEDULE_SECONDS": "[0.5, 1, 2, 2, 2, 2, 2, 2, 2, 2]",
    }
    receiver = WebhookReceiver()
    await receiver.start()
    cluster = BankCluster(folder, kafka=kafka, proxy_accounts=True, env=env)
    try:
        async with cluster:
            say(f"bank test: a bank in {folder} (transport: {'kafka' if kafka else 'pglog'})")
            population = await seed_population(
                cluster.base_url, customers, seed, signup_url=cluster.accounts_direct
            )
            subscribed = await _subscribe(cluster, receiver, population.customers[: max(1, customers // 3)])
            runner = FaultRunner(cluster, seed=seed, kill_every=kill_every)

            async def during(_start: float) -> dict[str, Any]:
                return summary(await runner.run(seconds))

            cfg = RunConfig(
                scenario="day",
                rate=rate,
                duration=seconds,
                seed=seed,
                customers=customers,
                base_url=cluster.base_url,
                signup_url=cluster.accounts_direct,
                live=False,
                settle_seconds=20.0,
                write_report=False,
                connections=64,
                wire=wire,
                iso8583_address=cluster.iso8583_address,
            )
            result = await run_scenario(
                cfg,
                population,
                during=during,
                say=say,
                bank_checks=lambda: ledger_problems(cluster.database_url),
            )
            quiet = await quiesce(cluster)
            say(f"bank test: quiet after {quiet['seconds']}s: {quiet['backlog']}")
            receipts = [
                {"webhook_id": subscribed[path], "message_id": message}
                for path, message in receiver.received
                if path in subscribed
            ]
            report = await settle(
                cluster.database_url,
                limit=60.0,
                gateway_url=cluster.base_url,
                customers=[Customer(c.account_id, c.token) for c in population.customers],
                push_url=cluster.push_url,
                webhook_receipts=receipts,
            )
            doc = {
                "transport": "kafka" if kafka else "pglog",
                "wire": wire,
                "links": result.report.get("links"),
                "seconds": seconds,
                "operations": {
                    "messages_sent": result.stats.offered,
                    "answers": result.report.get("codes", {}),
                    "planned": result.report.get("planned", {}),
                    # the customers' payments and pot moves the bank answered as done (their outcomes
                    # are in `answers` under payment, pot_deposit and pot_withdrawal)
                    "app_moves": result.report.get("app_moves", {}),
                    "customers": customers,
                    "webhooks": len(subscribed),
                    "webhook_requests_received": len(receiver.received),
                },
                "faults": result.report.get("chaos") or summary(runner.faults),
                "quiesce": quiet,
                "simulator_reconciliation_differences": result.differences[:20],
                # all of those but a repeat (0101) answered unlike its original, which moves no money:
                # balances and pots against the books, the ledger, messages and moves never answered
                "simulator_money_differences": [d for d in result.differences if REPEAT_ANSWERED not in d][
                    :20
                ],
                "checker": report.to_dict(),
            }
            return doc
    finally:
        await receiver.stop()


# Crashes under a network that never repeats -----------------------------------------------------

UNCONFIRMED_SQL = "SELECT count(*) FROM accounts.unconfirmed_holds"
APPROVED_HOLDS_SQL = """
SELECT a.network_transaction_id AS nid, h.status AS hold_status
FROM cards.authorisations a LEFT JOIN accounts.holds h ON h.network_txn_id = a.network_transaction_id
WHERE a.network_transaction_id = ANY($1::text[])
"""


@dataclass
class OneShotNetwork:
    """A card network that sends each 0100 once, open loop at `rate`, and never repeats or reverses
    what went unanswered: whatever a crash left behind, the bank alone must clean up."""

    base_url: str
    customers: list[Any]
    rate: float
    network_key: str = "dev-network-key"
    answers: dict[str, str] = field(default_factory=dict)  # network id -> response code, or an error
    sent: int = 0

    def message(self, seq: int, rng: random.Random) -> dict[str, Any]:
        c = self.customers[rng.randrange(len(self.customers))]
        return {
            "mti": "0100", "pan": c.pan, "expiry": c.expiry, "processing_code": "000000",
            "amount": rng.randint(100, 900), "currency": "GBP", "stan": f"{seq % 1_000_000:06d}",
            "rrn": f"{seq:012d}", "transmission_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "network_transaction_id": f"ONESHOT{os.getpid()}X{seq:08d}",
            "merchant": {"id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London",
                         "country": "GB", "postcode": "N1 3JD"},
        }  # fmt: skip

    async def run(self, seconds: float, seed: int = 1) -> None:
        rng = random.Random(seed)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        headers = {"x-network-key": self.network_key}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=3.0, limits=limits) as client:

            async def send(body: dict[str, Any]) -> None:
                nid = body["network_transaction_id"]
                try:
                    r = await client.post("/network/authorisations", json=body, headers=headers)
                    code = r.json().get("response_code") if r.status_code == 200 else None
                    self.answers[nid] = code or f"http_{r.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    self.answers[nid] = type(exc).__name__

            began, tasks = time.monotonic(), []
            while (elapsed := time.monotonic() - began) < seconds:
                due = int(elapsed * self.rate) - self.sent
                for _ in range(due):
                    self.sent += 1
                    tasks.append(asyncio.create_task(send(self.message(self.sent, rng))))
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)

    @property
    def approved(self) -> list[str]:
        return [nid for nid, code in self.answers.items() if code == "00"]


async def run_crash_test(
    folder: Path, *, seconds: float = 40.0, rate: float = 60.0, customers: int = 20, kill_every: float = 4.0,
    seed: int = 1, say: Any = print,
) -> dict[str, Any]:  # fmt: skip
    """Authorisations from a network that never repeats or reverses, while cards and accounts take
    turns to be killed with SIGKILL (mid-batch, at this rate) and restarted. Afterwards: how long until
    no hold is left that no approved authorisation stands behind (decision 0031: within 60 s), whether
    every approval the network was told of still holds its money, and the checker's verdict."""
    import asyncpg

    from bank.checker import STRAY_HOLDS, Customer, settle
    from simulator.population import seed_population

    env = {"GATEWAY_RATE_LIMITS": LIFTED_LIMITS}
    cluster = BankCluster(folder, env=env)
    async with cluster:
        population = await seed_population(
            cluster.base_url, customers, seed, signup_url=cluster.accounts_direct
        )
        network = OneShotNetwork(cluster.base_url, population.customers, rate)
        faults: list[Fault] = []

        async def crash() -> None:
            began = time.monotonic()
            targets = ("cards", "accounts")
            while time.monotonic() - began < seconds - kill_every / 2:
                await asyncio.sleep(kill_every / 2 + random.Random(len(faults)).random() * kill_every / 2)
                target = targets[len(faults) % 2]
                fault = Fault("kill", target, round(time.monotonic() - began, 2))
                faults.append(fault)
                fault.recovered_s = round(await cluster.restart(target), 2)

        await asyncio.gather(network.run(seconds, seed), crash())
        calm = time.monotonic()
        await cluster.all_ready()
        conn = await asyncpg.connect(cluster.libpq_url)
        try:
            stray: list[Any] = []
            while time.monotonic() - calm < 120:
                stray = await conn.fetch(STRAY_HOLDS)
                if not stray:
                    break
                await asyncio.sleep(0.5)
            released_after = round(time.monotonic() - calm, 2)
            unconfirmed = int(await conn.fetchval(UNCONFIRMED_SQL))
            approved = await conn.fetch(APPROVED_HOLDS_SQL, network.approved)
        finally:
            await conn.close()
        say(f"crash test: {network.sent} sent, {len(network.approved)} approved, {len(faults)} kills, "
            f"no stray hold {released_after}s after the last fault")  # fmt: skip
        report = await settle(
            cluster.database_url, limit=60.0, gateway_url=cluster.base_url,
            customers=[Customer(c.account_id, c.token) for c in population.customers],
            push_url=cluster.push_url,
        )  # fmt: skip
        codes: dict[str, int] = {}
        for code in network.answers.values():
            codes[code] = codes.get(code, 0) + 1
        return {
            "sent": network.sent,
            "answers": codes,
            "faults": summary(faults),
            "stray_holds_left": [dict(r) for r in stray],
            "no_stray_hold_after_s": released_after,
            "unconfirmed_left": unconfirmed,
            "approved_answered": len(network.approved),
            "approved_without_active_hold": [dict(r) for r in approved if r["hold_status"] != "active"],
            "approved_answered_unrecorded": len(network.approved) - len(approved),
            "checker": report.to_dict(),
        }


def main(argv: list[str] | None = None) -> None:
    """`python -m bank.faults --seconds 1800` (make soak): the bank test, long; exit 1 on a violation."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=1800.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--kill-every", type=float, default=10.0)
    parser.add_argument("--kafka", action="store_true")
    parser.add_argument("--wire", choices=("json", "iso8583"), default="json")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bank-soak-") as tmp:
        doc = asyncio.run(
            run_bank_test(
                Path(tmp),
                seconds=args.seconds,
                rate=args.rate,
                customers=args.customers,
                kafka=args.kafka,
                kill_every=args.kill_every,
                seed=args.seed,
                wire=args.wire,
            )
        )
    text = dump(doc)
    if args.report:
        args.report.write_text(text)
    print(text)
    sys.exit(0 if doc["checker"]["ok"] else 1)


if __name__ == "__main__":
    main()
