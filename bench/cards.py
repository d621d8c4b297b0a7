"""Benchmark of card authorisation: network -> cards -> accounts (place hold) -> answer.

    .venv/bin/python -m bench.cards [--cards 10000] [--connections 100] [--seconds 20]
                                    [--rates 300,30] [--rate-seconds 20] [--profile-seconds 10]
                                    [--via-gateway] [--what-if relay-linger,no-pre-ping]
                                    [--wrk [--wrk-connections 50] [--wrk-threads 2]]

Embedded mode, laid out as `bank up` runs it: a durable PostgreSQL (default settings, fsync on) in a
temporary folder, migrated; accounts and cards each in its own process (`python -m services.<name>`,
uvicorn, pglog transport, their relays running); this process is the card network, calling cards'
`POST /network/authorisations` over `--connections` keep-alive connections: directly, or with
`--via-gateway` through the gateway (its own process, as `bank up` runs it: the network key checked
there, the rate limits, deadlines and breakers of the route table).
`--cards` customers each get a funded account and one card (seeded with SQL and COPY).

* Max rate: closed loop, `--connections` workers sending back to back for `--seconds`.
* Offered rate: open loop at each of `--rates` authorisations/s for `--rate-seconds`; request k is due
  at start + k/rate whether or not earlier ones have answered, and its latency counts from then.
* With `--wrk` (what `make bench` runs, through the gateway): the max-rate run is wrk's instead (a C
  load generator from Debian, closed loop, `--wrk-connections` over `--wrk-threads` for `--seconds`),
  sending bench/wrk/authorise.lua's 0100 messages over the seeded cards (written to a file the script
  reads). Then, the bank's processes stopped, bench/baseline.py's endpoint (one FastAPI + asyncpg
  process, the same hold transaction) on the same PostgreSQL, seeded with the same PANs, under the same
  wrk run. Both are reported as approved (response code 00) per second, with latency percentiles and
  each process's CPU per authorisation (wrk's own included), and the ratio bank / baseline. Figures go
  to bench/results/cards-wrk.json.
* Where the time goes: each process's CPU per authorisation (psutil), the server-side latency of cards'
  route and accounts' hold route (their Prometheus histograms), and a cProfile of both service
  processes during one more closed-loop run (switched on and off by signal, so start-up is not in it),
  summed by package (the profiles are kept as bench/results/cards-<service>.prof).

Figures go to stdout and bench/results/cards.json. Nothing is asserted. On 2 cores the load
generator, both services and PostgreSQL share the CPUs; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import pstats
import random
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade
from bench.lean_http import Connection as LeanConnection
from services.cards.config import CardsSettings, decode_key
from services.cards.vault import Expiry, Vault, new_cvc, new_pan
from shared.config import to_libpq
from shared.runtime import serve

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NETWORK_KEY = "bench-network-key"
BALANCE = 10**9  # per account: nobody runs out during a run
clock = time.perf_counter


@dataclass(frozen=True)
class Card:
    pan: str
    expiry: str  # YYMM
    cvc: str


# -- seeding ---------------------------------------------------------------------------------------------


ACCOUNTS_SQL = """
INSERT INTO accounts.users (id, email, name, password_hash)
    SELECT 'user_b' || i, 'b' || i || '@bench.example', 'Bench ' || i, 'x' FROM generate_series(1, $1::int) i;
INSERT INTO accounts.accounts (id, kind, user_id, description, type, currency, balance, held)
    SELECT 'acc_b' || i, 'customer', 'user_b' || i, 'bench', 'uk_prepaid', 'GBP', $2::bigint, 0
    FROM generate_series(1, $1::int) i;
INSERT INTO accounts.journal_entries (id, kind, account_id, reference, description)
    SELECT 'je_b' || i, 'topup', 'acc_b' || i, 'topup_b' || i, 'Top up' FROM generate_series(1, $1::int) i;
INSERT INTO accounts.postings (entry_id, account_id, amount, currency)
    SELECT 'je_b' || i, 'acc_b' || i, $2::bigint, 'GBP' FROM generate_series(1, $1::int) i
    UNION ALL
    SELECT 'je_b' || i, 'int_topup_funding_gbp', -$2::bigint, 'GBP' FROM generate_series(1, $1::int) i;
"""


async def seed(url: str, count: int) -> list[Card]:
    """`count` customers with a funded account and one card each (the cards process's dev keys)."""
    settings = CardsSettings()
    vault = Vault(
        *(decode_key(k) for k in (settings.encryption_key, settings.fingerprint_key, settings.cvc_key))
    )
    now = datetime.now(UTC)
    expiry = Expiry.after(now, 3)
    cards: list[Card] = []
    rows: list[tuple[Any, ...]] = []
    drawn: set[str] = set()
    for i in range(1, count + 1):
        while (pan := new_pan(settings.bin)) in drawn:  # 10,000 draws from 10^9 numbers do collide
            pass
        drawn.add(pan)
        cvc, card_id = new_cvc(), f"card_b{i}"
        cards.append(Card(pan, expiry.yymm, cvc))
        secrets = (vault.fingerprint(pan), vault.encrypt_pan(pan, card_id), pan[-4:])
        card_expiry = (expiry.month, expiry.year, vault.cvc_digest(card_id, cvc))
        rows.append(
            (card_id, f"acc_b{i}", f"user_b{i}", "GBP", *secrets, *card_expiry, "active", [], True, now, now)
        )
    conn = await asyncpg.connect(to_libpq(url))
    try:
        async with conn.transaction():
            for statement in filter(str.strip, ACCOUNTS_SQL.split(";")):
                args = [a for n, a in ((1, count), (2, BALANCE)) if f"${n}" in statement]
                await conn.execute(statement, *args)
            await conn.copy_records_to_table(
                "cards", schema_name="cards", records=rows,
                columns=("id", "account_id", "user_id", "currency", "fingerprint", "pan_ciphertext", "last4",
                         "expiry_month", "expiry_year", "cvc_digest", "status", "blocked_mccs", "atm_enabled",
                         "created", "updated"),
            )  # fmt: skip
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return cards


# -- the services ----------------------------------------------------------------------------------------


class Service:
    """One bank service as its own OS process (`python -m services.<name>`, through `serve_profiled`
    below so that a cProfile can be switched on and off from outside with SIGUSR1 / SIGUSR2)."""

    def __init__(self, name: str, env: dict[str, str], port: int, profile_to: Path) -> None:
        self.name, self.port, self.url, self.profile_to = name, port, f"http://127.0.0.1:{port}", profile_to
        command = [sys.executable, "-m", "bench.cards", "_serve_profiled", name, str(profile_to)]
        self.log = profile_to.with_suffix(".log")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)

    def start_profile(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    async def stop_profile(self) -> Path:
        self.proc.send_signal(signal.SIGUSR2)
        for _ in range(300):
            if self.profile_to.exists():
                return self.profile_to
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} wrote no profile")

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout}s")
                await asyncio.sleep(0.1)

    def log_lines(self) -> int:
        return len(self.log.read_bytes().splitlines())

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, ours and others')."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


def postgres_cpu(pg: EmbeddedPostgres) -> float:
    """CPU seconds of the postmaster and every backend (all of PostgreSQL)."""
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def postgres_cpu_by_process(pg: EmbeddedPostgres) -> dict[int, float]:
    """CPU seconds of each PostgreSQL process, by pid (see `postgres_cpu_by_connection`)."""
    pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    out: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
    return out


async def postgres_cpu_by_connection(
    database_url: str, before: dict[int, float], after: dict[int, float]
) -> dict[str, float]:
    """CPU seconds between two `postgres_cpu_by_process` readings, by the connection's application_name
    (a service's pools and its event transport), or by the process's role for PostgreSQL's own
    processes (walwriter, checkpointer, ...). A backend that exited in between is not counted."""
    conn = await asyncpg.connect(to_libpq(database_url))
    try:
        rows = await conn.fetch("SELECT pid, application_name, backend_type FROM pg_stat_activity")
    finally:
        await conn.close()
    label = {r["pid"]: r["application_name"] or r["backend_type"] or "?" for r in rows}
    out: dict[str, float] = {}
    for pid, seconds in after.items():
        name = label.get(pid, "postmaster and exited")
        out[name] = out.get(name, 0.0) + seconds - before.get(pid, 0.0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- load ------------------------------------------------------------------------------------------------

_seq = 0


def message(cards: Sequence[Card]) -> dict[str, Any]:
    global _seq
    _seq += 1
    card = random.choice(cards)
    return {
        "mti": "0100", "pan": card.pan, "expiry": card.expiry, "cvc": card.cvc, "processing_code": "000000",
        "amount": random.randint(100, 5_000), "currency": "GBP", "stan": f"{_seq % 1_000_000:06d}",
        "rrn": f"{_seq:012d}", "transmission_time": datetime.now(UTC).isoformat(),
        "network_transaction_id": f"BENCH{os.getpid()}X{_seq}",
        "merchant": {"id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London",
                     "country": "GB", "postcode": "N1 3JD"},
    }  # fmt: skip


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()

    def figures(self, elapsed: float) -> dict[str, Any]:
        n = len(self.latencies)
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

        return {
            "authorisations": n, "seconds": round(elapsed, 2), "per_second": n / elapsed,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": lat[-1] * 1000 if n else 0, "codes": dict(self.codes),
        }  # fmt: skip


_RESPONSE_CODE = re.compile(rb'"response_code":\s*"(\d\d)"')


class Connection(LeanConnection):
    """One keep-alive connection to cards' network interface (bench/lean_http.py)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, {"Authorization": f"Bearer {NETWORK_KEY}"})

    async def send(self, rec: Recorder, cards: Sequence[Card], due: float | None = None) -> None:
        body = json.dumps(message(cards)).encode()
        started = clock() if due is None else due
        try:
            status, payload = await self.post("/network/authorisations", body)
            match = _RESPONSE_CODE.search(payload) if status == 200 else None
            code = match.group(1).decode() if match else f"http_{status}"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            code = type(exc).__name__
        rec.latencies.append(clock() - started)
        rec.codes[code] += 1


async def closed_loop(url: str, cards: Sequence[Card], connections: int, seconds: float) -> Recorder:
    """`connections` clients, each sending its next request as soon as the last is answered."""
    rec = Recorder()
    end = clock() + seconds
    host, port = url.removeprefix("http://").split(":")

    async def client() -> None:
        conn = Connection(host, int(port))
        try:
            while clock() < end:
                await conn.send(rec, cards)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return rec


async def open_loop(
    url: str, cards: Sequence[Card], connections: int, rate: float, seconds: float
) -> Recorder:
    """Request k is due at start + k/rate; a free connection takes the oldest due request. Latency
    counts from the due time, so waiting for a connection (the system falling behind) is included."""
    rec = Recorder()
    due: asyncio.Queue[float | None] = asyncio.Queue()
    host, port = url.removeprefix("http://").split(":")

    async def client() -> None:
        conn = Connection(host, int(port))
        try:
            while (when := await due.get()) is not None:
                await conn.send(rec, cards, when)
        finally:
            conn.close()

    clients = [asyncio.create_task(client()) for _ in range(connections)]
    start, total = clock() + 0.05, int(rate * seconds)
    for k in range(total):
        when = start + k / rate
        if (wait := when - clock()) > 0:
            await asyncio.sleep(wait)
        due.put_nowait(when)
    for _ in clients:
        due.put_nowait(None)
    await asyncio.gather(*clients)
    return rec


# -- wrk: a C load generator -----------------------------------------------------------------------------

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "authorise.lua"
_WRK_SUMMARY = re.compile(r"^WRK_SUMMARY (\{.*\})$", re.M)
_WRK_RATE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_WRK_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([0-9.]+)(us|ms|s|m|h)$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def wrk_version() -> str:
    """`4.1.0` (wrk prints its version and usage on --version, and exits 1)."""
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"wrk (?:\S+/)?([0-9][^\s-]*)", out)
    return found.group(1) if found else "?"


def write_cards(path: Path, cards: Sequence[Card]) -> Path:
    """The seeded cards for bench/wrk/authorise.lua: one `pan expiry cvc` a line."""
    path.write_text("".join(f"{c.pan} {c.expiry} {c.cvc}\n" for c in cards))
    return path


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: the Lua script's summary line (codes, latency in microseconds), and wrk's own report."""

    summary: dict[str, Any]
    requests_per_second: float | None  # wrk's `Requests/sec:` line
    latency_distribution_ms: dict[str, float]  # wrk's `--latency` lines: "50%" -> ms
    output: str

    def figures(self, elapsed: float) -> dict[str, Any]:
        s, lat = self.summary, self.summary["latency_us"]
        seconds = s["duration_us"] / 1e6  # wrk's own clock, not the process's start-up and exit
        n, codes = s["requests"], dict(sorted(s["codes"].items(), key=lambda kv: -kv[1]))
        return {
            "authorisations": n, "seconds": round(seconds, 2), "per_second": n / seconds,
            "approved_per_second": codes.get("00", 0) / seconds,
            "wrk_requests_per_second": self.requests_per_second,
            **{f"{q}_ms": lat[q] / 1000 for q in ("p50", "p90", "p99", "p99_9")}, "max_ms": lat["max"] / 1000,
            "mean_ms": lat["mean"] / 1000, "codes": codes,
            "socket_errors": {k: v for k, v in s["errors"].items() if v and k != "status"},
            "wrk_latency_distribution_ms": self.latency_distribution_ms, "wrk_output": self.output,
        }  # fmt: skip


def parse_wrk(output: str) -> WrkRun:
    found = _WRK_SUMMARY.search(output)
    if found is None:
        raise RuntimeError(f"no WRK_SUMMARY line in wrk's output:\n{output}")
    rate = _WRK_RATE.search(output)
    distribution = {
        f"{float(q):g}%": round(float(v) * _UNIT_MS[unit], 3)
        for q, v, unit in _WRK_PERCENTILE.findall(output)
    }
    return WrkRun(json.loads(found.group(1)), float(rate.group(1)) if rate else None, distribution, output)


@dataclass(frozen=True)
class Wrk:
    """How to drive /network/authorisations with wrk: threads, connections, and the cards it may use."""

    cards_file: Path
    threads: int
    connections: int

    def command(self, url: str, seconds: float) -> list[str]:
        nonce = f"{time.time_ns() // 1_000_000:x}{secrets.token_hex(3)}"  # network ids unique across runs
        return [
            shutil.which("wrk") or "wrk", f"--threads={self.threads}", f"--connections={self.connections}",
            f"--duration={max(1, round(seconds))}s", "--timeout=10s", "--latency", f"--script={WRK_SCRIPT}",
            f"{url}/network/authorisations", "--", str(self.cards_file), NETWORK_KEY, nonce,
        ]  # fmt: skip

    async def run(self, url: str, seconds: float) -> WrkRun:
        proc = await asyncio.create_subprocess_exec(
            *self.command(url, seconds), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        output = out.decode(errors="replace")
        if proc.returncode:
            raise RuntimeError(f"wrk exited with {proc.returncode}:\n{output}")
        return parse_wrk(output)

    @staticmethod
    def cpu_parts() -> dict[str, Callable[[], float]]:
        """wrk's CPU (counted when it exits), and this process's (the harness, idle meanwhile)."""
        return {"wrk": children_cpu, "bench harness": own_cpu}


async def wrk_baseline(
    wrk: Wrk, pg: EmbeddedPostgres, database_url: str, cards: Sequence[Card], seconds: float
) -> dict[str, Any]:
    """bench/baseline.py's endpoint (one FastAPI + asyncpg process, the same hold transaction) on the same
    PostgreSQL, seeded with the same PANs, driven by the same wrk script for as long as the bank was."""
    from bench.baseline import BaselineServer
    from bench.baseline import seed as seed_baseline

    await seed_baseline(database_url, [c.pan for c in cards])
    server = BaselineServer(database_url)
    try:
        await server.ready()
        baseline = psutil.Process(server.proc.pid)

        def baseline_cpu() -> float:
            times = baseline.cpu_times()
            return float(times.user + times.system)

        print("baseline: warming up with wrk ...", file=sys.stderr)
        await wrk.run(server.url, 3)
        print(f"baseline: wrk for {seconds:.0f}s ...", file=sys.stderr)
        parts = {"baseline": baseline_cpu, "postgres": lambda: postgres_cpu(pg), **wrk.cpu_parts()}
        return await load_and_cpu(
            "baseline (one FastAPI + asyncpg process)", parts, wrk.run(server.url, seconds)
        )
    finally:
        server.stop()


# -- what the services say about themselves ---------------------------------------------------------------

_SAMPLE = re.compile(r"^(\w+)_(sum|count|bucket)\{([^}]*)\} ([0-9.e+-]+)$", re.M)
STAGES = ("admission", "lookup", "decision", "accounts", "record")
HTTP = "http_request_duration_seconds"


async def histograms(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every histogram series a service exposes: (metric, selecting label) -> sum, count, buckets.

    The selecting label is the route for HTTP latency and the stage for cards' timing spans."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{url}/metrics")).text
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for metric, kind, labels, value in _SAMPLE.findall(text):
        key_label = re.search(r'(?:route|stage)="([^"]+)"', labels)
        if key_label is None or ('method="' in labels and 'method="POST"' not in labels):
            continue
        series = out.setdefault((metric, key_label.group(1)), {"sum": 0.0, "count": 0.0, "buckets": {}})
        if kind == "bucket":
            le = re.search(r'le="([^"]+)"', labels)
            assert le is not None
            series["buckets"][float(le.group(1))] = float(value)
        else:
            series[kind] = float(value)
    return out


_COUNTER = re.compile(r'^card_issuer_unavailable_total\{cause="(\w+)"\} ([0-9.e+-]+)$', re.M)


async def unavailable_causes(url: str) -> Counter[str]:
    """cards' 91s so far, by why accounts did not answer (timeout, circuit_open, ...)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{url}/metrics")).text
    return Counter({cause: int(float(value)) for cause, value in _COUNTER.findall(text)})


def server_side(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, float]:
    before = before or {"sum": 0.0, "count": 0.0, "buckets": {}}
    count = after["count"] - before["count"]
    if not count:
        return {"count": 0}
    buckets = sorted((le, after["buckets"][le] - before["buckets"].get(le, 0.0)) for le in after["buckets"])

    def quantile(q: float) -> float:
        """Upper bound of the histogram bucket holding the q-quantile (Prometheus buckets are coarse)."""
        return next((le for le, n in buckets if n >= q * count), float("inf"))

    return {"count": count, "mean_ms": (after["sum"] - before["sum"]) / count * 1000,
            "p50_le_ms": quantile(0.5) * 1000, "p99_le_ms": quantile(0.99) * 1000}  # fmt: skip


@dataclass
class Stack:
    pg: EmbeddedPostgres
    accounts: Service
    cards: Service
    gateway: Service | None = None


def own_cpu() -> float:
    """CPU seconds of this process (the Python load generator, or the harness around wrk)."""
    times = os.times()
    return times.user + times.system


def children_cpu() -> float:
    """CPU seconds of this process's children that have exited and been waited for: across one wrk run,
    the only such child is wrk itself (the services keep running until the end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def load_and_cpu(
    name: str, parts: dict[str, Callable[[], float]], run: Awaitable[Recorder | WrkRun]
) -> dict[str, Any]:
    """Run the load, and the CPU seconds each of `parts` (and the rest of the machine) spent meanwhile,
    per authorisation answered."""

    def cpu_now() -> dict[str, float]:
        ours = {part: seconds() for part, seconds in parts.items()}
        return {**ours, "other processes": machine_busy() - sum(ours.values())}

    cpu_before = cpu_now()
    started = clock()
    outcome = await run
    elapsed = clock() - started
    cpu_after = cpu_now()
    figures = outcome.figures(elapsed)
    n = figures["authorisations"]
    spent = {part: cpu_after[part] - cpu_before[part] for part in cpu_after}
    return {
        "phase": name, **figures,
        "cpu_ms_per_authorisation": {part: s / n * 1000 if n else 0.0 for part, s in spent.items()},
        "machine_cpu_busy_percent": sum(spent.values()) / (elapsed * (os.cpu_count() or 1)) * 100,
    }  # fmt: skip


async def measure(
    name: str, stack: Stack, run: Awaitable[Recorder | WrkRun],
    load_generator: dict[str, Callable[[], float]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The load's figures, CPU per authorisation of every process, and what the services say."""
    urls = (stack.cards.url, stack.accounts.url)
    metrics_before = [await histograms(u) for u in urls]
    causes_before = await unavailable_causes(stack.cards.url)
    parts: dict[str, Callable[[], float]] = {} if stack.gateway is None else {"gateway": stack.gateway.cpu}
    parts |= {
        "cards": stack.cards.cpu,
        "accounts": stack.accounts.cpu,
        "postgres": lambda: postgres_cpu(stack.pg),
    }
    parts |= load_generator or {"load generator": own_cpu}
    log_lines_before = stack.cards.log_lines()
    result = await load_and_cpu(name, parts, run)
    metrics_after = [await histograms(u) for u in urls]
    causes = await unavailable_causes(stack.cards.url) - causes_before

    def delta(service: int, metric: str, label: str) -> dict[str, float]:
        after = metrics_after[service].get((metric, label))
        return server_side(metrics_before[service].get((metric, label)), after) if after else {"count": 0}

    return {
        **result, "why_91": dict(causes), "cards_log_lines": stack.cards.log_lines() - log_lines_before,
        "server": {"cards /network/authorisations": delta(0, HTTP, "/network/authorisations"),
                   "accounts /internal/holds": delta(1, HTTP, "/internal/holds")},
        "cards_stages": {stage: delta(0, "card_authorisation_stage_seconds", stage) for stage in STAGES},
    }  # fmt: skip


# -- the profile ------------------------------------------------------------------------------------------

PACKAGES = [
    ("services/cards", "services.cards"), ("services/accounts", "services.accounts"), ("shared/", "shared"),
    ("services/gateway", "services.gateway"), ("opentelemetry", "opentelemetry (tracing)"),
    ("sqlalchemy", "sqlalchemy"),
    ("asyncpg", "asyncpg"), ("pydantic", "pydantic"), ("fastapi", "fastapi+starlette"),
    ("starlette", "fastapi+starlette"), ("uvicorn", "uvicorn"), ("h11", "h11 (HTTP/1.1, server and client)"),
    ("httpx", "httpx+httpcore"), ("httpcore", "httpx+httpcore"), ("anyio", "anyio"),
    ("asyncio", "asyncio event loop"), ("selectors", "asyncio event loop"), ("json", "json"),
    ("cryptography", "crypto (hmac, AES)"), ("hmac", "crypto (hmac, AES)"), ("hashlib", "crypto (hmac, AES)"),
    ("logging", "logging"), ("prometheus_client", "prometheus"), ("email", "httpx+httpcore"),
]  # fmt: skip


# Where a process's time starts: HTTP handlers and background loops (inclusive time, % of all own time).
ENTRY_POINTS = {
    "uvicorn: a request, end to end": ("httptools_impl.py", "run_asgi"),
    "gateway: a proxied request": ("services/gateway/edge.py", "__call__"),
    "cards: /network/authorisations handler": ("network_api.py", "authorisation"),
    "accounts: /internal/holds handler": ("services/accounts/api.py", "place_hold"),
    "outbox relay: publish_batch": ("relay.py", "publish_batch"),
    "cards: compensation job": ("compensation.py", "compensate_due"),
}


def bucket_of(filename: str) -> str:
    if filename.startswith("~") or filename == "<built-in>":
        return "builtins (sockets, C calls)"
    return next((label for needle, label in PACKAGES if needle in filename), "other")


_SPY_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):\d+\)$")


def summarise_spy(path: Path, authorisations: int) -> dict[str, Any]:
    """A py-spy sampling profile (`--format raw`: one `frame;frame;… count` line per stack): own time
    by package, and the inclusive share of the entry points. Sampling does not slow the process
    down as cProfile does, nor misattribute time across coroutine switches."""
    own: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [m.groupdict() for f in stack.split(";") if (m := _SPY_FRAME.match(f))]
        own[bucket_of(frames[-1]["file"]) if frames else "builtins (sockets, C calls)"] += n
        for label, (file, func) in ENTRY_POINTS.items():
            if any(f["file"].endswith(file) and f["func"].endswith(func) for f in frames):
                entries[label] += n
    total = total or 1
    return {
        "profiled_authorisations": authorisations,
        "samples": total,
        "share_by_package": {k: round(v / total * 100, 1) for k, v in own.most_common()},
        "inclusive_share_of_entry_points": {k: round(entries[k] / total * 100, 1) for k in ENTRY_POINTS},
    }


async def spy_on(services: Sequence[Service], seconds: float, rate: int = 200) -> dict[str, Path]:
    """Record each service process with py-spy for `seconds`, all at once."""
    outputs = {s.name: RESULTS_DIR / f"cards-{s.name}.spy.txt" for s in services}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for s in services:
        command = [py_spy, "record", "-p", str(s.proc.pid), "-d", str(int(seconds)), "-r", str(rate),
                   "-f", "raw", "-o", str(outputs[s.name]), "--nonblocking", "--full-filenames"]  # fmt: skip
        procs.append(
            await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
        )
    for proc in procs:
        await proc.wait()
    return outputs


def summarise_profile(path: Path, authorisations: int) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_bucket: Counter[str] = Counter()
    functions = []
    for (filename, line, func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        by_bucket[bucket_of(filename)] += tottime
        functions.append((tottime, f"{Path(filename).name}:{line}({func})"))
    total = sum(by_bucket.values()) or 1.0
    functions.sort(reverse=True)

    def inclusive(file: str, func: str) -> float:
        seconds = sum(
            ct
            for (f, _line, fn), (_c, _n, _t, ct, _callers) in raw.items()
            if f.endswith(file) and fn == func
        )
        return round(seconds / total * 100, 1)

    entries = {label: inclusive(file, func) for label, (file, func) in ENTRY_POINTS.items()}
    return {
        "profiled_authorisations": authorisations,
        "share_by_package": {k: round(v / total * 100, 1) for k, v in by_bucket.most_common()},
        "us_per_authorisation_by_package": {
            k: round(v / max(authorisations, 1) * 1e6) for k, v in by_bucket.most_common()
        },
        "top_functions_ms_total": [(name, round(t * 1000)) for t, name in functions[:15]],
        "inclusive_share_of_entry_points": entries,
    }


# -- the run -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Args:
    cards: int
    connections: int
    seconds: float
    rates: tuple[float, ...]
    rate_seconds: float
    profile_seconds: float
    what_if: str
    via_gateway: bool = False
    spy_seconds: float = 0
    wrk: bool = False
    wrk_connections: int = 50
    wrk_threads: int = 2


async def run(args: Args, pg: EmbeddedPostgres, url: str, folder: Path) -> dict[str, Any]:
    database_url = url
    print(f"seeding {args.cards} customers, accounts and cards ...", file=sys.stderr)
    cards = await seed(url, args.cards)
    wrk = Wrk(write_cards(folder / "cards.txt", cards), args.wrk_threads, args.wrk_connections)
    ports = {"accounts": free_port(), "cards": free_port(), "gateway": free_port()}
    env = {
        **os.environ,
        "BANK_DATABASE_URL": url,
        "BANK_TRANSPORT": "pglog",
        "BANK_LOG_LEVEL": "WARNING",
        "BANK_ACCOUNTS_URL": f"http://127.0.0.1:{ports['accounts']}",
        "BANK_CARDS_URL": f"http://127.0.0.1:{ports['cards']}",
        "BANK_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
        "CARDS_NETWORK_API_KEY": NETWORK_KEY,
        "GATEWAY_NETWORK_API_KEY": NETWORK_KEY,
        "BENCH_WHAT_IF": args.what_if,
    }
    accounts = Service("accounts", env, ports["accounts"], folder / "accounts.prof")
    cards_service = Service("cards", env, ports["cards"], folder / "cards.prof")
    gateway = Service("gateway", env, ports["gateway"], folder / "gateway.prof") if args.via_gateway else None
    stack = Stack(pg, accounts, cards_service, gateway)
    result: dict[str, Any] = {"path": "gateway -> cards -> accounts" if gateway else "cards -> accounts"}
    if args.wrk:
        result["wrk"] = {"version": wrk_version(), "threads": wrk.threads, "connections": wrk.connections,
                         "cards": len(cards), "script": "bench/wrk/authorise.lua"}  # fmt: skip
    try:
        await accounts.ready()
        await cards_service.ready()
        url = cards_service.url
        if gateway is not None:
            await gateway.ready()
            url = gateway.url
        if args.wrk:
            print("warming up with wrk ...", file=sys.stderr)
            await wrk.run(url, 3)
            print(f"wrk: {args.wrk_connections} connections for {args.seconds:.0f}s ...", file=sys.stderr)
            bank = measure(f"bank, {result['path']}", stack, wrk.run(url, args.seconds), wrk.cpu_parts())
            result["wrk_bank"] = await bank
            print(brief(result["wrk_bank"]), file=sys.stderr)
        if args.rates or args.spy_seconds or args.profile_seconds or (args.seconds and not args.wrk):
            print("warming up ...", file=sys.stderr)
            await closed_loop(url, cards, args.connections, 3)
        if args.seconds and not args.wrk:
            print(f"max rate: {args.connections} connections for {args.seconds:.0f}s ...", file=sys.stderr)
            result["max_rate"] = await measure(
                "max rate", stack, closed_loop(url, cards, args.connections, args.seconds)
            )
            print(brief(result["max_rate"]), file=sys.stderr)
        for rate in args.rates:
            print(f"open loop: {rate:g}/s for {args.rate_seconds:.0f}s ...", file=sys.stderr)
            await asyncio.sleep(3)  # let the previous run's backlog (relay, compensations) settle
            offered = open_loop(url, cards, args.connections, rate, args.rate_seconds)
            result[f"offered_{rate:g}"] = await measure(f"{rate:g}/s offered", stack, offered)
            print(brief(result[f"offered_{rate:g}"]), file=sys.stderr)
        if args.spy_seconds:
            print(f"py-spy on every service for {args.spy_seconds:.0f}s ...", file=sys.stderr)
            await asyncio.sleep(1)
            watched = [s for s in (gateway, cards_service, accounts) if s is not None]
            spying = asyncio.ensure_future(spy_on(watched, args.spy_seconds))
            rec = await closed_loop(url, cards, args.connections, args.spy_seconds + 1)
            for name, path in (await spying).items():
                result[f"spy_{name}"] = summarise_spy(path, len(rec.latencies))
        if args.profile_seconds:
            print(f"profiling both services for {args.profile_seconds:.0f}s ...", file=sys.stderr)
            await asyncio.sleep(1)
            for service in (cards_service, accounts):
                service.start_profile()
            rec = await closed_loop(url, cards, args.connections, args.profile_seconds)
            for service in (cards_service, accounts):
                profile = await service.stop_profile()
                result[f"profile_{service.name}"] = summarise_profile(profile, len(rec.latencies))
                # Kept for a closer look (python -m pstats bench/results/cards-<service>.prof).
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(profile, RESULTS_DIR / f"cards-{service.name}.prof")
    finally:
        if gateway is not None:
            gateway.stop()
        cards_service.stop()
        accounts.stop()
    if args.wrk:
        # The bank's processes are gone; the same PostgreSQL, the same cards, the same load.
        await asyncio.sleep(3)  # let PostgreSQL settle (checkpoint, autovacuum) after the bank's run
        result["wrk_baseline"] = await wrk_baseline(wrk, pg, database_url, cards, args.seconds)
        print(brief(result["wrk_baseline"]), file=sys.stderr)
        bank_ok, base_ok = (
            result["wrk_bank"]["approved_per_second"],
            result["wrk_baseline"]["approved_per_second"],
        )
        result["wrk_ratio_bank_to_baseline"] = bank_ok / base_ok if base_ok else None
    return result


def brief(r: dict[str, Any]) -> str:
    approved = f" ({r['approved_per_second']:.0f}/s approved)" if "approved_per_second" in r else ""
    return (
        f"  {r['per_second']:.0f}/s{approved}, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms,"
        f" codes {r['codes']}"
    )


def report(result: dict[str, Any], env: dict[str, str]) -> str:
    about = ", ".join(f"{k} {v}" for k, v in env.items())
    lines = [f"Card authorisation benchmark, {result['path']} ({about})"]
    if "wrk_bank" in result:
        lines += wrk_report(result)
    for key in [k for k in result if k == "max_rate" or k.startswith("offered_")]:
        r = result[key]
        cpu = "  ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_authorisation"].items())
        lines += [
            f"\n{r['phase']}: {r['per_second']:.0f} authorisations/s"
            f" ({r['authorisations']} in {r['seconds']} s)",
            f"  latency ms  p50 {r['p50_ms']:.1f}  p90 {r['p90_ms']:.1f}  p99 {r['p99_ms']:.1f}"
            f"  max {r['max_ms']:.1f}",
            f"  response codes {r['codes']}; 91s by cause {r['why_91']}",
            f"  CPU ms per authorisation  {cpu}",
            f"  machine CPU busy {r['machine_cpu_busy_percent']:.0f} %,"
            f" cards log lines {r['cards_log_lines']}",
        ]
        stages = r.get("cards_stages", {})
        if any(v.get("count") for v in stages.values()):
            spans = "  ".join(f"{k} {v['mean_ms']:.1f}" for k, v in stages.items() if v.get("count"))
            lines.append(f"  inside cards, mean ms per stage: {spans}")
        for route, s in r["server"].items():
            if s.get("count"):
                lines.append(
                    f"  server time {route}: mean {s['mean_ms']:.1f} ms, "
                    f"p50 <= {s['p50_le_ms']:g} ms, p99 <= {s['p99_le_ms']:g} ms"
                )
    for name in ("gateway", "cards", "accounts"):
        if (p := result.get(f"spy_{name}")) is None:
            continue
        lines.append(
            f"\n{name} process under py-spy, max rate, {p['profiled_authorisations']} authorisations,"
            f" {p['samples']} samples:"
        )
        lines.append("  own time by package (share of samples)")
        lines += [f"    {k:<36}{v:>6.1f} %" for k, v in p["share_by_package"].items() if v >= 0.5]
        lines.append("  inclusive time of entry points (% of samples)")
        lines += [f"    {k:<44}{v:>6.1f} %" for k, v in p["inclusive_share_of_entry_points"].items() if v]
    for name in ("cards", "accounts"):
        if (p := result.get(f"profile_{name}")) is None:
            continue
        lines.append(
            f"\n{name} process under cProfile, max rate, {p['profiled_authorisations']} authorisations:"
        )
        lines.append("  own time by package (share, microseconds per authorisation)")
        us = p["us_per_authorisation_by_package"]
        lines += [
            f"    {k:<36}{v:>6.1f} %{us[k]:>8} us" for k, v in p["share_by_package"].items() if v >= 0.5
        ]
        lines.append("  inclusive time of entry points (% of the process's time)")
        lines += [f"    {k:<44}{v:>6.1f} %" for k, v in p["inclusive_share_of_entry_points"].items() if v]
        lines.append("  top functions by own time (ms in total)")
        lines += [f"    {t:>7}  {fn}" for fn, t in p["top_functions_ms_total"]]
    return "\n".join(lines)


def wrk_report(result: dict[str, Any]) -> list[str]:
    bank, base, args = result["wrk_bank"], result["wrk_baseline"], result["wrk"]
    lines = [
        f"\nwrk {args['version']}, closed loop: {args['threads']} threads, {args['connections']} connections,"
        f" {bank['seconds']:g} s per run, bench/wrk/authorise.lua over {args['cards']} cards"
    ]
    for r in (bank, base):
        cpu = "  ".join(f"{k} {v:.2f}" for k, v in r["cpu_ms_per_authorisation"].items())
        lines += [
            f"\n{r['phase']}: {r['approved_per_second']:.1f} approved/s"
            f" ({r['per_second']:.1f} answered/s, {r['authorisations']} in {r['seconds']:g} s;"
            f" wrk says {r['wrk_requests_per_second']} requests/s)",
            f"  latency ms  p50 {r['p50_ms']:.1f}  p90 {r['p90_ms']:.1f}  p99 {r['p99_ms']:.1f}"
            f"  p99.9 {r['p99_9_ms']:.1f}  max {r['max_ms']:.1f}",
            f"  response codes {r['codes']}"
            + (f"; socket errors {r['socket_errors']}" if r["socket_errors"] else "")
            + (f"; 91s by cause {r['why_91']}" if r.get("why_91") else ""),
            f"  CPU ms per authorisation  {cpu}",
            f"  machine CPU busy {r['machine_cpu_busy_percent']:.0f} %",
        ]
        for route, s in r.get("server", {}).items():
            if s.get("count"):
                lines.append(
                    f"  server time {route}: mean {s['mean_ms']:.1f} ms, "
                    f"p50 <= {s['p50_le_ms']:g} ms, p99 <= {s['p99_le_ms']:g} ms"
                )
    ratio = result["wrk_ratio_bank_to_baseline"]
    figures = f"{bank['approved_per_second']:.1f} / {base['approved_per_second']:.1f}"
    lines.append(
        f"\nratio bank / baseline, approved/s: {figures} = {ratio:.3f}"
        if ratio is not None
        else f"\nratio bank / baseline, approved/s: {figures} (the baseline approved nothing)"
    )
    return lines


def parse_args(argv: Sequence[str] | None) -> Args:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cards", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20, help="length of the max-rate run (0: none)")
    parser.add_argument(
        "--rates",
        default="300,30",
        help="comma-separated offered authorisations/s, one open-loop run each ('': none)",
    )
    parser.add_argument("--rate-seconds", type=float, default=20)
    parser.add_argument("--profile-seconds", type=float, default=10, help="0: no profile")
    parser.add_argument("--via-gateway", action="store_true", help="send through the gateway")
    parser.add_argument(
        "--spy-seconds", type=float, default=0, help="sample every service with py-spy at max rate (0: no)"
    )
    parser.add_argument(
        "--what-if", default="", help=f"comma-separated platform experiments: {', '.join(WHAT_IF)}"
    )
    parser.add_argument(
        "--wrk",
        action="store_true",
        help="drive the max-rate run (--seconds) with wrk and bench/wrk/authorise.lua instead of Python,"
        " then bench/baseline.py's endpoint the same way, and report both and their ratio",
    )
    parser.add_argument("--wrk-connections", type=int, default=50)
    parser.add_argument("--wrk-threads", type=int, default=2)
    ns = parser.parse_args(argv)
    unknown = set(filter(None, ns.what_if.split(","))) - set(WHAT_IF)
    if unknown:
        parser.error(f"unknown --what-if {', '.join(sorted(unknown))}")
    if ns.wrk:
        if shutil.which("wrk") is None:
            parser.error("--wrk needs wrk on the PATH (make system-deps, or apt-get install wrk)")
        if ns.seconds < 1:
            parser.error("--wrk needs --seconds of at least 1")
        if not 1 <= ns.wrk_threads <= ns.wrk_connections:
            parser.error("--wrk-threads must be between 1 and --wrk-connections")
    rates = tuple(float(r) for r in ns.rates.split(",") if r.strip())
    return Args(
        ns.cards, ns.connections, ns.seconds, rates, ns.rate_seconds, ns.profile_seconds, ns.what_if,
        ns.via_gateway, ns.spy_seconds, ns.wrk, ns.wrk_connections, ns.wrk_threads,
    )  # fmt: skip


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(folder / "postgres", free_port())  # durable: PostgreSQL's default settings
    try:
        print(f"starting PostgreSQL on port {server.port} ...", file=sys.stderr)
        server.start()
        yield server
    finally:
        server.stop("immediate")


WHAT_IF = ("relay-linger", "no-pre-ping")


def apply_what_if(options: list[str]) -> None:
    """Experiments on the platform, in the service processes of this benchmark only, to size what the
    lead might change in shared/: the code under test stays as it is unless asked."""
    if "relay-linger" in options:
        from shared.events.relay import Relay

        async def drain(self: Relay) -> int:
            # Let commits that arrive within 5 ms share one publish, and do not ask again for more
            # when the batch came back short (the wake-up event reports new commits anyway).
            await asyncio.sleep(0.005)
            total = 0
            while (
                (sent := await self.publish_batch()) and (total := total + sent) and sent == self.batch_size
            ):
                pass
            return total

        Relay.drain = drain  # type: ignore[method-assign]
    if "no-pre-ping" in options:
        from shared import db

        create = db.create_async_engine

        def no_ping(*args: Any, **kwargs: Any) -> Any:
            return create(*args, **{**kwargs, "pool_pre_ping": False})

        db.create_async_engine = no_ping


def serve_profiled(service: str, out: str) -> None:
    """A service process whose cProfile SIGUSR1 switches on and SIGUSR2 switches off and writes."""
    apply_what_if([o for o in os.environ.get("BENCH_WHAT_IF", "").split(",") if o])
    profiler = cProfile.Profile()

    def start(*_: object) -> None:
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(out + ".part")
        os.replace(out + ".part", out)  # whole, or not there at all

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    serve(service, f"services.{service}.app:create_app")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_serve_profiled"]:
        serve_profiled(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    with tempfile.TemporaryDirectory(prefix="bench-cards-") as tmp, postgres(Path(tmp)) as pg:
        url = pg.create_database("bench_cards")
        upgrade(url)
        env = {
            "postgresql": pg.psql("SHOW server_version").strip(),
            "python": platform.python_version(),
            "cpus": str(os.cpu_count()),
            "load average before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "what if": args.what_if or "-",
        }
        result = asyncio.run(run(args, pg, url, Path(tmp)))
    print(report(result, env), flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / ("cards-wrk.json" if args.wrk else "cards.json")
    path.write_text(
        json.dumps({"environment": env, "args": args.__dict__, **result}, indent=2, default=str) + "\n"
    )
    print(f"\nwritten to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
