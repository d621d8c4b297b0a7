"""A whole bank the simulator can break: PostgreSQL, migrations, every service as its own process.

`bank up` shuts the whole bank down when one service dies (its supervisor's rule), so the failure
scenarios run their own: the same processes (`python -m services.<name>`, same environment
variables), but each one can be killed with SIGKILL and started again. Optionally the other services
reach accounts through a delaying TCP proxy (to slow accounts down), and the bank runs on a Kafka
broker that can be stopped and started.
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

import httpx

from bank.infra.kafka import KafkaBroker, free_port
from bank.infra.postgres import EmbeddedPostgres
from shared.config import SERVICES

LIFTED_LIMITS = json.dumps({
    "default": {"rate": 10_000, "burst": 10_000}, "auth": {"rate": 10_000, "burst": 10_000},
    "network": {"rate": 100_000, "burst": 100_000}, "ops": {"rate": 5, "burst": 50},
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


class Cluster:
    def __init__(
        self,
        folder: Path,
        *,
        kafka: bool = False,
        proxy_accounts: bool = False,
        database_url: str | None = None,
        durable: bool = False,
    ) -> None:
        self.durable = durable  # PostgreSQL with fsync (benchmarks) or without (tests)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kafka = kafka
        self.ports = {name: free_port() for name in SERVICES}
        self.proxy: DelayProxy | None = None
        self.accounts_port = self.ports["accounts"]
        if proxy_accounts:
            self.accounts_port = free_port()  # where accounts really listens; the others use the proxy
            self.proxy = DelayProxy(self.ports["accounts"], self.accounts_port)
        self.iso8583_port = free_port()  # cards' ISO 8583 link (docs/iso8583.md)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pg: EmbeddedPostgres | None = None
        self.broker: KafkaBroker | None = None
        self.database_url = database_url or ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def iso8583_address(self) -> str:
        return f"127.0.0.1:{self.iso8583_port}"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def env_for(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
        env.update(
            BANK_DATABASE_URL=self.database_url, BANK_DATA_DIR=str(self.folder / "data"),
            BANK_LOG_LEVEL=env.get("BANK_LOG_LEVEL", "WARNING"), GATEWAY_RATE_LIMITS=LIFTED_LIMITS,
        )  # fmt: skip
        for service, port in self.ports.items():
            env[f"BANK_{service.upper()}_URL"] = f"http://127.0.0.1:{port}"
        env["CARDS_ISO8583_PORT"] = str(self.iso8583_port)
        if name == "accounts":
            env["BANK_ACCOUNTS_URL"] = f"http://127.0.0.1:{self.accounts_port}"
        if self.broker is not None:
            env.update(BANK_TRANSPORT="kafka", BANK_KAFKA_BOOTSTRAP=self.broker.bootstrap)
        return env

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
        for name in [s for s in SERVICES if s != "gateway"] + ["gateway"]:
            self.start_service(name)
        await asyncio.gather(*(self.ready(name) for name in self.procs))

    def start_service(self, name: str) -> None:
        log = (self.folder / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=self.env_for(name), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

    async def ready(self, name: str, timeout: float = 90.0) -> float:
        """Seconds until `name` answers /readyz 200."""
        began = time.monotonic()
        url = f"http://127.0.0.1:{self.accounts_port if name == 'accounts' else self.ports[name]}/readyz"
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    tail = (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return time.monotonic() - began
                if time.monotonic() - began > timeout:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f}s")
                await asyncio.sleep(0.1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait()

    async def restart(self, name: str) -> float:
        self.kill(name)
        self.start_service(name)
        return await self.ready(name)

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
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

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
