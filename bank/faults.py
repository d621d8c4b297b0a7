"""A bank that can be broken on purpose, and the faults to break it with (the bank test's runner).

`BankCluster` runs PostgreSQL (embedded), migrations, the local fake APNs/FCM and every service as
its own OS process (`python -m services.<name>`, the same as `bank up`), each with its log file in
the cluster's folder. Unlike `bank up`, one service can be killed with SIGKILL and started again,
PostgreSQL can be restarted under the running services, accounts can be put behind a TCP proxy that
delays every request, and (with `kafka=True`) the bank runs on a Kafka broker that can be stopped.

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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bank.infra.kafka import KafkaBroker, free_port
from bank.infra.postgres import EmbeddedPostgres
from shared.config import SERVICES, to_libpq

KILLABLE = tuple(SERVICES)  # the gateway too
OUTBOX_SCHEMAS = ("accounts", "cards", "transactions", "webhooks", "notifications")


class DelayProxy:
    """A TCP proxy that holds every chunk from client to server for `delay` seconds (0: straight through)."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self.delay = 0.0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, delayed: bool) -> None:
            try:
                while data := await r.read(65536):
                    if delayed and self.delay:
                        await asyncio.sleep(self.delay)
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    w.close()

        await asyncio.gather(pipe(client_r, server_w, True), pipe(server_r, client_w, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


class BankCluster:
    """PostgreSQL, migrations, fake push and every service, as processes this object can break."""

    def __init__(
        self,
        folder: Path,
        *,
        kafka: bool = False,
        proxy_accounts: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kafka = kafka
        self.extra_env = dict(env or {})
        self.ports = {name: free_port() for name in SERVICES}
        self.accounts_port = self.ports["accounts"]  # where accounts really listens
        self.proxy: DelayProxy | None = None
        if proxy_accounts:
            self.accounts_port = free_port()
            self.proxy = DelayProxy(self.ports["accounts"], self.accounts_port)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pg: EmbeddedPostgres | None = None
        self.broker: KafkaBroker | None = None
        self.push_port = free_port()
        self.push: subprocess.Popen[bytes] | None = None
        self.iso8583_port = free_port()  # cards' ISO 8583 link (docs/iso8583.md)
        self.database_url = ""

    # Addresses ----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The gateway: the public API."""
        return self.url("gateway")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def accounts_direct(self) -> str:
        """Accounts itself, bypassing the delay proxy (sign-ups in bulk, the checker's API reads)."""
        return f"http://127.0.0.1:{self.accounts_port}"

    @property
    def iso8583_address(self) -> str:
        return f"127.0.0.1:{self.iso8583_port}"

    @property
    def push_url(self) -> str:
        return f"http://127.0.0.1:{self.push_port}"

    @property
    def libpq_url(self) -> str:
        return to_libpq(self.database_url)

    def log_files(self) -> list[Path]:
        return sorted(self.folder.glob("*.log"))

    def env_for(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BANK_DATABASE_URL")}
        env.update(
            BANK_DATABASE_URL=self.database_url,
            BANK_DATA_DIR=str(self.folder / "data"),
            BANK_LOG_LEVEL=env.get("BANK_LOG_LEVEL", "INFO"),
            NOTIFICATIONS_APNS_URL=self.push_url,
            NOTIFICATIONS_FCM_URL=self.push_url,
            NOTIFICATIONS_FCM_TOKEN_URI=f"{self.push_url}/token",
            CARDS_ISO8583_PORT=str(self.iso8583_port),
        )
        for service, port in self.ports.items():
            env[f"BANK_{service.upper()}_URL"] = f"http://127.0.0.1:{port}"
        if name == "accounts":
            env["BANK_ACCOUNTS_URL"] = self.accounts_direct
        if self.broker is not None:
            env.update(BANK_TRANSPORT="kafka", BANK_KAFKA_BOOTSTRAP=self.broker.bootstrap)
        env.update(self.extra_env)
        return env

    # Life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        from bank.migrate import upgrade

        self.pg = EmbeddedPostgres(self.folder / "postgres", free_port(), durable=False)
        await asyncio.to_thread(self.pg.start)
        self.database_url = await asyncio.to_thread(self.pg.create_database, "bank")
        await asyncio.to_thread(upgrade, self.database_url)
        if self.kafka:
            self.broker = KafkaBroker(self.folder / "kafka")
            await asyncio.to_thread(self.broker.start)
        if self.proxy is not None:
            await self.proxy.start()
        self._start_push()
        for name in [s for s in SERVICES if s != "gateway"] + ["gateway"]:
            self.start_service(name)
        await asyncio.gather(*(self.ready(name) for name in SERVICES))

    def _start_push(self) -> None:
        log = (self.folder / "fake-push.log").open("ab")
        command = [
            sys.executable,
            "-m",
            "services.notifications.providers.fake",
            "--port",
            str(self.push_port),
        ]
        self.push = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_service(self, name: str) -> None:
        log = (self.folder / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=self.env_for(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    async def ready(self, name: str, timeout: float = 120.0) -> float:
        """Seconds until `name` answers /readyz with 200 (its database and transport are usable)."""
        began = time.monotonic()
        port = self.accounts_port if name == "accounts" else self.ports[name]
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    tail = (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        return time.monotonic() - began
                if time.monotonic() - began > timeout:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f}s")
                await asyncio.sleep(0.1)

    async def all_ready(self) -> None:
        await asyncio.gather(*(self.ready(name) for name in SERVICES))

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    async def restart(self, name: str) -> float:
        """SIGKILL `name`, start it again; seconds until it is ready."""
        self.kill(name)
        self.start_service(name)
        return await self.ready(name)

    async def restart_postgres(self) -> float:
        """Stop PostgreSQL as a crash would (immediate), start it on the same port; seconds it took."""
        assert self.pg is not None
        began = time.monotonic()
        await asyncio.to_thread(self.pg.stop, "immediate")
        await asyncio.to_thread(self.pg.start)
        return time.monotonic() - began

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in [*self.procs.values(), *([self.push] if self.push else [])]:
            if proc is self.push and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self.pg is not None:
            await asyncio.to_thread(self.pg.stop, "immediate")

    async def __aenter__(self) -> BankCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def pg_dump(self) -> str:
        """The whole database as SQL text (data included): what a PAN scan reads."""
        assert self.pg is not None
        from bank.infra.postgres import POSTGRES_BIN_PATH

        binary = Path(POSTGRES_BIN_PATH) / "pg_dump"
        out = subprocess.run(
            [str(binary), "--no-owner", self.libpq_url], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {out.stderr[-2000:]}")
        return out.stdout


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


LIFTED_LIMITS = json.dumps(
    {
        "default": {"rate": 100_000, "burst": 100_000},
        "auth": {"rate": 100_000, "burst": 100_000},
        "network": {"rate": 100_000, "burst": 100_000},
        "ops": {"rate": 100, "burst": 100},
    }
)


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
    quiesce, run the checker. Returns the report: operations, faults, invariant violations.
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
                database_url=cluster.database_url,
                settle_seconds=20.0,
                write_report=False,
                connections=64,
                wire=wire,
                iso8583_address=cluster.iso8583_address,
            )
            result = await run_scenario(cfg, population, during=during, say=say)
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
                    "customers": customers,
                    "webhooks": len(subscribed),
                    "webhook_requests_received": len(receiver.received),
                },
                "faults": result.report.get("chaos") or summary(runner.faults),
                "quiesce": quiet,
                "simulator_reconciliation_differences": result.differences[:20],
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
