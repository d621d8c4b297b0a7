"""Benchmark of card authorisations: POST /internal/holds on the accounts service, closed loop.

    .venv/bin/python -m bench.holds [--seconds 10] [--concurrency 50] [--pool-size 10]

Everything is real and thrown away afterwards: a durable PostgreSQL (default settings, fsync on) in a
temporary folder on a free port, a database migrated with `bank.migrate.upgrade`, and the accounts
internal API served by uvicorn (one worker) in its own OS process, so that the load generator and the
server do not share one CPU-bound event loop. The server is built by `make_app` below: `LedgerService`
and the internal router on `shared.web.create_app`, with the settings a deployed service reads
(BANK_DATABASE_URL, BANK_DB_POOL_SIZE, BANK_INTERNAL_TOKEN). The outbox relay does not run, so the
events the holds write stay in the outbox.

Two scenarios, each `--seconds` long after a short warm-up, `--concurrency` clients each sending one
request at a time over its own keep-alive connection:

* distinct: every client authorises on its own funded account, so no two requests wait on the same
  row lock;
* hot: every client authorises on one account, so every request queues on that account's row lock.

Amounts are small and the accounts well funded: nothing declines. Figures (holds/s, latency
percentiles, approvals and declines, CPU per hold of the server, PostgreSQL and the load generator)
go to stdout and to bench/results/holds.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from fastapi import FastAPI

from bank.cluster import ledger_problems
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade
from bench.lean_http import Connection
from services.accounts.api import internal_router
from services.accounts.config import AccountsSettings
from services.accounts.models import User
from services.accounts.service import LedgerService
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.config import BankSettings, load
from shared.db import Database
from shared.events.outbox import Outbox
from shared.ids import new_id
from shared.web import create_app

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_WORKERS = 1
WARMUP_REQUESTS = 5  # per client, before the clock starts: connections and the pool are open
FUNDING = 10**10  # minor units on every account: far more than any run can hold
TOKEN = "bench-internal-token"

clock = time.perf_counter


# -- the server (runs in its own process: `python -m uvicorn --factory bench.holds:make_app`) ----------


def make_app() -> FastAPI:
    """The accounts internal API as a deployed service builds it, from the environment's settings."""
    settings = load(BankSettings)
    db = Database(settings.async_database_url, pool_size=settings.db_pool_size, application_name="accounts")
    ledger = LedgerService(Outbox("accounts"), load(AccountsSettings))
    app = create_app(
        "accounts",
        routers=[internal_router(db, ledger)],
        checkers={"database": db.checker()},
        on_shutdown=[db.dispose],
    )
    app.state.internal_token = settings.internal_token
    return app


# -- figures ---------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on already sorted values."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requests: int
    seconds: float
    holds_per_second: float
    approved: int
    declined: dict[str, int]
    errors: dict[str, int]
    latency_ms: dict[str, float]
    cpu_ms_per_hold: dict[str, float]
    machine_cpu_busy_percent: float
    postgres_sessions_opened: int  # new connections during the measured run: the server pool's churn
    ledger_problems: list[str]


class CpuMeter:
    """CPU seconds (user + system) used between start() and stop(): by the server, by this process, by
    PostgreSQL, and by the whole machine (which includes anything else running on it)."""

    def __init__(self, roots: dict[str, psutil.Process], postmaster: psutil.Process) -> None:
        self.roots = roots
        self.postmaster = postmaster
        self.before: dict[str, float] = {}
        self.before_pg: dict[int, float] = {}
        self.before_machine = psutil.cpu_times()
        self.started = 0.0

    def _postgres(self) -> dict[int, float]:
        used = {}
        for proc in [self.postmaster, *self.postmaster.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                used[proc.pid] = times.user + times.system
        return used

    def _sample(self) -> dict[str, float]:
        return {name: sum(proc.cpu_times()[:2]) for name, proc in self.roots.items()}

    def start(self) -> None:
        self.before, self.before_pg = self._sample(), self._postgres()
        self.before_machine, self.started = psutil.cpu_times(), clock()

    def stop(self) -> dict[str, float]:
        after, after_pg, machine, elapsed = self._sample(), self._postgres(), psutil.cpu_times(), clock()
        used = {name: after[name] - self.before[name] for name in after}
        # A backend that exits during the run (the pool closing an overflow connection) takes its CPU time
        # with it, so this is a lower bound; new backends count from zero.
        used["postgresql"] = sum(cpu - self.before_pg.get(pid, 0.0) for pid, cpu in after_pg.items())
        idle = (machine.idle + machine.iowait) - (self.before_machine.idle + self.before_machine.iowait)
        wall = (elapsed - self.started) * (os.cpu_count() or 1)
        used["machine_busy_fraction"] = max(0.0, 1 - idle / wall) if wall else math.nan
        return used


# -- the load ---------------------------------------------------------------------------------------------


async def drive(
    base_url: str,
    name: str,
    accounts: list[str],
    seconds: float,
    concurrency: int,
    cpu: CpuMeter,
    sessions: Callable[[], int],
) -> tuple[list[float], Counter[str], float, dict[str, float]]:
    """`concurrency` closed-loop clients for `seconds`; client i uses accounts[i % len(accounts)]."""
    headers = {INTERNAL_TOKEN_HEADER: TOKEN}
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    connections = [Connection.to(base_url, headers) for _ in range(concurrency)]
    try:

        async def post(worker: int, seq: int) -> tuple[float, str]:
            body = {
                "account_id": accounts[worker % len(accounts)],
                "network_txn_id": f"{name}-{worker}-{seq}",
                "amount": 1 + (worker * 7 + seq) % 999,
                "currency": "GBP",
            }
            started = clock()
            try:
                status, payload = await connections[worker].post("/internal/holds", json.dumps(body).encode())
            except (OSError, asyncio.IncompleteReadError) as exc:
                return clock() - started, f"transport:{type(exc).__name__}"
            elapsed = clock() - started
            answer = json.loads(payload)
            if status != 200:
                return elapsed, f"http_{status}:{answer.get('code', '?')}"
            hold = answer["hold"]
            return elapsed, "approved" if hold["status"] == "active" else f"declined:{hold['decline_reason']}"

        async def warm(worker: int) -> None:
            for seq in range(WARMUP_REQUESTS):
                await post(worker, -1 - seq)

        await asyncio.gather(*(warm(w) for w in range(concurrency)))

        deadline = 0.0

        async def client(worker: int) -> None:
            seq = 0
            while clock() < deadline:
                elapsed, outcome = await post(worker, seq)
                latencies.append(elapsed)
                outcomes[outcome] += 1
                seq += 1

        opened = await asyncio.to_thread(sessions)
        cpu.start()
        started = clock()
        deadline = started + seconds
        await asyncio.gather(*(client(w) for w in range(concurrency)))
        elapsed = clock() - started
        used = cpu.stop()
        used["sessions_opened"] = await asyncio.to_thread(sessions) - opened
    finally:
        for connection in connections:
            connection.close()
    return latencies, outcomes, elapsed, used


async def seed(url: str, customers: int) -> list[str]:
    """Funded customer accounts, opened and topped up through the ledger like any customer's."""
    db = Database(url, pool_size=2, application_name="bench-seed")
    ledger = LedgerService(Outbox("accounts"), AccountsSettings(topup_max=FUNDING))
    accounts = []
    try:
        for _ in range(customers):
            user_id = new_id("user")
            async with db.transaction() as session:
                session.add(
                    User(id=user_id, email=f"{user_id}@bench.example", name="Bench", password_hash="x")
                )
                await session.flush()
                account = await ledger.open_account(session, user_id)
                await ledger.topup(session, user_id, account.id, FUNDING, "GBP")
            accounts.append(account.id)
    finally:
        await db.dispose()
    return accounts


def run_scenario(
    name: str,
    description: str,
    base_url: str,
    database_url: str,
    accounts: list[str],
    args: Args,
    cpu: CpuMeter,
    sessions: Callable[[], int],
) -> Scenario:
    latencies, outcomes, elapsed, used = asyncio.run(
        drive(base_url, name, accounts, args.seconds, args.concurrency, cpu, sessions)
    )
    ms = sorted(x * 1000 for x in latencies)
    requests = len(latencies)
    approved = outcomes.pop("approved", 0)
    declined = {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("declined:")}
    errors = {k: v for k, v in outcomes.items() if not k.startswith("declined:")}
    return Scenario(
        name=name,
        description=description,
        requests=requests,
        seconds=round(elapsed, 3),
        holds_per_second=round(requests / elapsed, 1) if elapsed else math.nan,
        approved=approved,
        declined=declined,
        errors=errors,
        latency_ms={
            "mean": round(sum(ms) / len(ms), 2) if ms else math.nan,
            "p50": round(percentile(ms, 50), 2),
            "p90": round(percentile(ms, 90), 2),
            "p99": round(percentile(ms, 99), 2),
            "max": round(ms[-1], 2) if ms else math.nan,
        },
        cpu_ms_per_hold={
            k: round(v * 1000 / requests, 2) if requests else math.nan
            for k, v in used.items()
            if k not in ("machine_busy_fraction", "sessions_opened")
        },
        machine_cpu_busy_percent=round(used["machine_busy_fraction"] * 100, 1),
        postgres_sessions_opened=int(used["sessions_opened"]),
        ledger_problems=asyncio.run(ledger_problems(database_url)),
    )


# -- infrastructure ----------------------------------------------------------------------------------


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
def accounts_server(database_url: str, pool_size: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "BANK_DATABASE_URL": database_url,
        "BANK_DB_POOL_SIZE": str(pool_size),
        "BANK_INTERNAL_TOKEN": TOKEN,
        "BANK_LOG_JSON": "false",
    }
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.holds:make_app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(SERVER_WORKERS), "--log-level", "warning", "--no-access-log",
        "--timeout-keep-alive", "60",  # a connection the server drops while idle fails the next request
    ]  # fmt: skip
    print(f"starting the accounts service on port {port} ...", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the accounts service exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the accounts service did not become ready within 60 s")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def postmaster_of(pg: EmbeddedPostgres) -> psutil.Process:
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    return psutil.Process(pid)


# -- report and entry point --------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "",
        f"== POST /internal/holds ==  PostgreSQL {env['postgresql']} (durable), Python {env['python']}, "
        f"{env['cpus']} CPUs, load average before the run {env['load_average_before']}",
        f"  server: {env['server_workers']} uvicorn worker (one process, one event loop), "
        f"DB pool {env['db_pool_size']} + {env['db_pool_size']} overflow; load generator: "
        f"{result['concurrency']} closed-loop clients in another process, "
        f"{result['seconds']:g} s per scenario",
        f"  {'scenario':<10}{'holds/s':>9}{'requests':>10}{'approved':>10}{'declined':>10}{'errors':>8}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"   CPU ms/hold: server / postgres / client; machine busy",
    ]
    for s in result["scenarios"]:
        lat, cpu = s["latency_ms"], s["cpu_ms_per_hold"]
        lines.append(
            f"  {s['name']:<10}{s['holds_per_second']:>9,.0f}{s['requests']:>10,}{s['approved']:>10,}"
            f"{sum(s['declined'].values()):>10,}{sum(s['errors'].values()):>8,}"
            f"{lat['p50']:>9.1f}{lat['p90']:>9.1f}{lat['p99']:>9.1f}{lat['max']:>9.1f}"
            f"   {cpu['server']:.2f} / {cpu['postgresql']:.2f} / {cpu['client']:.2f}; "
            f"{s['machine_cpu_busy_percent']:.0f}%"
        )
    lines.append(
        "  (postgres CPU is a lower bound: backends that exit mid-run take theirs with them; machine busy"
        " counts every program on the machine, not only this benchmark)"
    )
    for s in result["scenarios"]:
        lines.append(f"  {s['name']}: {s['description']}")
        if s["declined"] or s["errors"]:
            lines.append(f"    declined {s['declined']}, errors {s['errors']}")
        verdict = "sound" if not s["ledger_problems"] else f"{len(s['ledger_problems'])} problems"
        lines.append(
            f"    new PostgreSQL connections during the run: {s['postgres_sessions_opened']}; "
            f"ledger verify after the run: {verdict}"
        )
    return "\n".join(lines)


def save(result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "holds.json"
    clean = json.loads(json.dumps(result), parse_constant=lambda _: None)  # NaN -> null
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class Args:
    seconds: float
    concurrency: int
    pool_size: int


def parse_args(argv: Sequence[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m bench.holds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each scenario")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients (and accounts)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=BankSettings.model_fields["db_pool_size"].default,
        help="the server's BANK_DB_POOL_SIZE (it may open as many again as overflow)",
    )
    ns = parser.parse_args(argv)
    if ns.concurrency < 1 or ns.seconds <= 0 or ns.pool_size < 1:
        parser.error("--seconds, --concurrency and --pool-size must be positive")
    return Args(ns.seconds, ns.concurrency, ns.pool_size)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    try:
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-holds-")))
            pg = stack.enter_context(postgres(folder))
            url = pg.create_database("bench_holds")
            upgrade(url)
            print(f"opening {args.concurrency + 1} funded accounts ...", file=sys.stderr)
            accounts = asyncio.run(seed(url, args.concurrency + 1))
            distinct, hot = accounts[:-1], accounts[-1:]
            base_url, server = stack.enter_context(accounts_server(url, args.pool_size))

            def sessions() -> int:
                """Connections PostgreSQL has accepted to the benchmark's database so far."""
                return int(pg.psql("SELECT sessions FROM pg_stat_database WHERE datname = 'bench_holds'"))

            cpu = CpuMeter(
                {"server": psutil.Process(server.pid), "client": psutil.Process()}, postmaster_of(pg)
            )
            scenarios = []
            for name, description, targets in (
                ("distinct", f"each client on its own account ({len(distinct)} accounts)", distinct),
                ("hot", "every client on one account (all queue on its row lock)", hot),
            ):
                print(f"running {name} for {args.seconds:g} s ...", file=sys.stderr)
                scenario = run_scenario(name, description, base_url, url, targets, args, cpu, sessions)
                scenarios.append(asdict(scenario))
            result = {
                "benchmark": "holds",
                "endpoint": "POST /internal/holds",
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "environment": {
                    "postgresql": pg.psql("SHOW server_version").strip(),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "server_workers": SERVER_WORKERS,
                    "db_pool_size": args.pool_size,
                    "outbox_relay": "not running",
                    "load_average_before": load_before,
                },
                "scenarios": scenarios,
            }
    except KeyboardInterrupt:
        print("\ninterrupted; everything started here has been stopped", file=sys.stderr)
        return 130
    print(report(result), flush=True)
    print(f"  (saved to {save(result)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
