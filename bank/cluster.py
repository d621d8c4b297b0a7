"""A whole bank of our own, as processes this object can break: the one launcher for tests, the bank
test, chaos scenarios and benchmarks.

`BankCluster` runs PostgreSQL (embedded, or the one `database_url` names), migrations, the local fake
APNs/FCM and every service as its own OS process (`python -m services.<name>`, the same as `bank up`),
each with its log file in the cluster's folder. Unlike `bank up` (whose supervisor shuts the whole
bank down when one service dies), one service can be killed with SIGKILL and started again,
PostgreSQL can be restarted under the running services, accounts can be put behind a TCP proxy that
delays every request (`DelayProxy`), and (with `kafka=True`) the bank runs on a Kafka broker that can
be stopped and started.

`BankCluster.for_load(...)` is the same bank set up for load: the gateway's rate limits lifted,
WARNING logs, no fake push provider (a benchmark brings its own through the environment, which every
service inherits).

The card network (`simulator/`) is an outside client: it is handed this bank's addresses (`base_url`,
`iso8583_address`) and talks to it only through its wires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bank.infra.kafka import KafkaBroker
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from shared.config import SERVICES, to_libpq

# The gateway's rate limits lifted (GATEWAY_RATE_LIMITS): seeding many customers, and load far past
# what one client may send by default.
LIFTED_LIMITS = json.dumps({
    "default": {"rate": 100_000, "burst": 100_000}, "auth": {"rate": 100_000, "burst": 100_000},
    "network": {"rate": 100_000, "burst": 100_000}, "ops": {"rate": 100, "burst": 100},
})  # fmt: skip


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
        durable: bool = False,
        database_url: str | None = None,
        push: bool = True,
        log_level: str | None = None,
    ) -> None:
        """`env`: set for every service, over everything else. `durable`: the embedded PostgreSQL
        with fsync (benchmarks) or without (tests). `database_url`: use this PostgreSQL instead of
        starting one. `push`: start the local fake APNs/FCM and point notifications at it."""
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kafka = kafka
        self.durable = durable
        self.extra_env = dict(env or {})
        self.log_level = log_level or os.environ.get("BANK_LOG_LEVEL", "INFO")
        self.ports = {name: free_port() for name in SERVICES}
        self.accounts_port = self.ports["accounts"]  # where accounts really listens
        self.proxy: DelayProxy | None = None
        if proxy_accounts:  # the other services reach accounts through the proxy
            self.accounts_port = free_port()
            self.proxy = DelayProxy(self.ports["accounts"], self.accounts_port)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pg: EmbeddedPostgres | None = None
        self.broker: KafkaBroker | None = None
        self.push_port = free_port() if push else 0
        self.push: subprocess.Popen[bytes] | None = None
        self.iso8583_port = free_port()  # cards' ISO 8583 link (docs/iso8583.md)
        self.database_url = database_url or ""

    @classmethod
    def for_load(cls, folder: Path, **options: Any) -> BankCluster:
        """The bank set up for load: rate limits lifted, WARNING logs, no fake push provider."""
        env = {"GATEWAY_RATE_LIMITS": LIFTED_LIMITS, **options.pop("env", {})}
        options.setdefault("log_level", os.environ.get("BANK_LOG_LEVEL", "WARNING"))
        options.setdefault("push", False)
        return cls(folder, env=env, **options)

    # Addresses ----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The gateway: the public API."""
        return self.url("gateway")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def accounts_direct(self) -> str:
        """Accounts itself, bypassing the delay proxy (sign-ups in bulk)."""
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
            BANK_LOG_LEVEL=self.log_level,
            CARDS_ISO8583_PORT=str(self.iso8583_port),
        )
        if self.push_port:
            env.update(
                NOTIFICATIONS_APNS_URL=self.push_url,
                NOTIFICATIONS_FCM_URL=self.push_url,
                NOTIFICATIONS_FCM_TOKEN_URI=f"{self.push_url}/token",
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

        if not self.database_url:
            self.pg = EmbeddedPostgres(self.folder / "postgres", free_port(), durable=self.durable)
            await asyncio.to_thread(self.pg.start)
            self.database_url = await asyncio.to_thread(self.pg.create_database, "bank")
        await asyncio.to_thread(upgrade, self.database_url)
        if self.kafka:
            self.broker = KafkaBroker(self.folder / "kafka")
            await asyncio.to_thread(self.broker.start)
        if self.proxy is not None:
            await self.proxy.start()
        if self.push_port:
            self._start_push()
        for name in [s for s in SERVICES if s != "gateway"] + ["gateway"]:
            self.start_service(name)
        await self.all_ready()

    def _start_push(self) -> None:
        log = (self.folder / "fake-push.log").open("ab")
        command = [sys.executable, "-m", "services.notifications.providers.fake", "--port",
                   str(self.push_port)]  # fmt: skip
        self.push = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_service(self, name: str) -> None:
        log = (self.folder / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=self.env_for(name), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
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
        await asyncio.gather(*(self.ready(name) for name in self.procs))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait()

    async def restart(self, name: str) -> float:
        """SIGKILL `name`, start it again; seconds until it is ready."""
        self.kill(name)
        self.start_service(name)
        return await self.ready(name)

    async def restart_postgres(self) -> float:
        """Stop PostgreSQL as a crash would (immediate), start it on the same port; seconds it took."""
        assert self.pg is not None, "only the embedded PostgreSQL can be restarted"
        began = time.monotonic()
        await asyncio.to_thread(self.pg.stop, "immediate")
        await asyncio.to_thread(self.pg.start)
        return time.monotonic() - began

    async def stop(self) -> None:
        for proc in [*self.procs.values(), *([self.push] if self.push else [])]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in [*self.procs.values(), *([self.push] if self.push else [])]:
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
        from bank.infra.postgres import POSTGRES_BIN_PATH

        binary = Path(POSTGRES_BIN_PATH) / "pg_dump"
        out = subprocess.run(
            [str(binary), "--no-owner", self.libpq_url], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {out.stderr[-2000:]}")
        return out.stdout


async def ledger_problems(database_url: str) -> list[str]:
    """`bank ledger verify`: every balance recomputed from its postings, every entry sums to zero."""
    from services.accounts.verify import verify_ledger
    from shared.db import Database

    db = Database(database_url, pool_size=1, application_name="bank-ledger-verify")
    try:
        return await verify_ledger(db)
    finally:
        await db.dispose()
