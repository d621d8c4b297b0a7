"""`make bench`: the standard set, written as JSON and a Markdown table under bench/results/.

    .venv/bin/python -m bench.standard [--customers 1000] [--rate 300] [--seconds 30]
                                       [--probe-seconds 10] [--with-existing]

1. A bank of its own (bank.cluster: durable PostgreSQL in a temporary folder, every service as
   its own process, pglog transport), a population seeded through the public API, then left to
   settle (the seeding's events consumed) before anything is measured.
2. The simulator's `steady` at --rate authorisations/s for --seconds, through the gateway, open loop,
   then reconciled; RSS of every service right after.
3. The maximum sustained rate: probes of --probe-seconds, the rate x1.5 while sustained (halved while
   not, if the first probe fails), then two bisections. Sustained = p99 < 100 ms and ≥ 99% of
   authorisations answered 00/51 (no 91, 429, 5xx or timeouts).
4. The baseline (bench/baseline.py): the same hold transaction in one FastAPI + asyncpg process on
   the same PostgreSQL, measured the same way; the ratio bank / baseline is the architecture's cost.
5. With --with-existing: bench.events, bench.holds and bench.gateway with their defaults (minutes).

The load generator shares the machine with the bank: on 2 cores the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from simulator.books import Books
from simulator.loadgen import Network, Pool, Stats
from simulator.population import Customer
from simulator.report import machine
from simulator.scenarios import AUTHORISATION, generate

RESULTS = Path(__file__).resolve().parent / "results"
P99_LIMIT_MS = 100.0
OK_CODES = ("00", "51")


async def steady_run(
    url: str, customers: list[Customer], rate: float, duration: float, *, key: str,
    budgets: list[int] | None = None, seed: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """`steady` at `rate` for `duration` against `url`'s /network/authorisations; the figures."""
    start = budgets or [c.topup for c in customers]
    prefix = f"B{int(time.time() * 1000) % 10**10:010d}"
    schedule = generate("steady", rate=rate, duration=duration, seed=seed, budgets=start, prefix=prefix)
    stats, books = Stats(), Books(start=list(start))
    pool = Pool(url, {"x-network-key": key})
    try:
        await Network(pool, customers, books, stats, timeout=10).run(schedule)
    finally:
        pool.close()
    p = stats.percentiles(AUTHORISATION)
    codes = dict(stats.codes[AUTHORISATION])
    ok = sum(n for c, n in codes.items() if c in OK_CODES)
    total = max(1, sum(codes.values()))
    return {
        "offered_per_s": rate,
        "seconds": duration,
        "authorisations": p.get("count", 0),
        "achieved_per_s": round(p.get("count", 0) / max(stats.elapsed, 1e-9), 1),
        **{k: round(v, 2) for k, v in p.items() if k.endswith("_ms")},
        "codes": codes,
        "ok_share": round(ok / total, 4),
        "sustained": p.get("p99_ms", 1e9) < P99_LIMIT_MS and ok / total >= 0.99,
        "books": books,
    }


async def max_rate(
    url: str, customers: list[Customer], *, key: str, seconds: float, start: float = 100, cap: float = 5000,
    floor: float = 5, budgets: list[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The highest probed rate that was sustained, and every probe."""
    probes: list[dict[str, Any]] = []

    async def probe(rate: float) -> bool:
        r = await steady_run(url, customers, rate, seconds, key=key, budgets=budgets, seed=len(probes) + 7)
        r.pop("books")
        probes.append(r)
        print(f"  probe {rate:.0f}/s: p99 {r.get('p99_ms')} ms, ok {r['ok_share']:.1%}", file=sys.stderr)
        await asyncio.sleep(2)  # let queues drain between probes
        return bool(r["sustained"])

    good, bad, rate = 0.0, 0.0, start
    while rate <= cap:
        if await probe(rate):
            good, rate = rate, rate * 1.5
        else:
            bad = rate
            break
    # The first probe failed: halve down until one is sustained (or the rate is too low to matter),
    # so a slow system gets a figure, not 0.
    while not good and bad >= 2 * floor:
        rate = round(bad / 2)
        if await probe(rate):
            good = rate
        else:
            bad = rate
    for _ in range(2):
        if not bad or not good:
            break
        mid = round((good + bad) / 2)
        if await probe(mid):
            good = mid
        else:
            bad = mid
    return {"max_sustained_per_s": good, "first_failing_per_s": bad or None, "probes": probes}


def rss_mb(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
        except psutil.Error:
            out[name] = -1
    return out


def cpu_seconds(procs: dict[str, subprocess.Popen[bytes]], pg: Any) -> dict[str, float]:
    """CPU seconds used so far by each service process and by PostgreSQL (all its processes)."""
    from bench.cards import postgres_cpu

    out = {}
    for name, proc in procs.items():
        try:
            times = psutil.Process(proc.pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    if pg is not None:
        out["postgres"] = postgres_cpu(pg)
    return out


async def settled(database_url: str, limit: float = 180.0) -> float:
    """Seconds until every outbox is published and every consumer has caught up (or `limit`)."""
    from bank.faults import until_no_backlog

    began = time.monotonic()
    await until_no_backlog(database_url, limit)
    return round(time.monotonic() - began, 1)


async def standard(args: argparse.Namespace) -> dict[str, Any]:
    from bank.cluster import BankCluster, ledger_problems
    from bench.baseline import BaselineServer, fake_customers, seed
    from simulator.population import seed_population
    from simulator.reconcile import balances, reconcile
    from simulator.runner import DEV_NETWORK_KEY

    result: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="bench-standard-") as tmp:
        await asyncio.to_thread(Path(tmp).chmod, 0o755)  # the embedded PostgreSQL's user goes in there
        async with BankCluster.for_load(Path(tmp), durable=True) as cluster:
            began = time.monotonic()
            pop = await seed_population(
                cluster.base_url, args.customers, 1, signup_url=cluster.url("accounts")
            )
            result["seeding_s"] = round(time.monotonic() - began, 1)
            print(f"seeded {args.customers} customers in {result['seeding_s']}s", file=sys.stderr)
            # Measure the steady state, not the bank still digesting the seeding's events.
            result["settled_after_seeding_s"] = await settled(cluster.database_url)
            start = await balances(cluster.base_url, pop.customers)
            cpu_before = cpu_seconds(cluster.procs, cluster.pg)
            bank = await steady_run(cluster.base_url, pop.customers, args.rate, args.seconds,
                                    key=DEV_NETWORK_KEY, budgets=start)  # fmt: skip
            books = bank.pop("books")
            result["service_rss_mb"] = rss_mb(cluster.procs)
            # Until every consumer has caught up: what one authorisation costs each process in all.
            await settled(cluster.database_url)
            cpu_after = cpu_seconds(cluster.procs, cluster.pg)
            n = max(1, bank["authorisations"])
            result["cpu_ms_per_authorisation"] = {
                name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / n * 1000, 2) for name in cpu_after
            }
            diffs = await reconcile(books, pop.customers, cluster.base_url, settle_seconds=30)
            diffs += await ledger_problems(cluster.database_url)
            bank["reconciliation_differences"] = len(diffs)
            result["bank_steady"] = bank
            print(f"bank at {args.rate}/s: {bank}", file=sys.stderr)
            after = await balances(cluster.base_url, pop.customers)
            result["bank_max"] = await max_rate(cluster.base_url, pop.customers, key=DEV_NETWORK_KEY,
                                                seconds=args.probe_seconds, budgets=after)  # fmt: skip
            customers = fake_customers(args.customers)
            await seed(cluster.database_url, [c.pan for c in customers])
            server = BaselineServer(cluster.database_url)
            try:
                await server.ready()
                base = await steady_run(server.url, customers, args.rate, args.seconds, key="-")
                base.pop("books")
                result["baseline_steady"] = base
                result["baseline_max"] = await max_rate(
                    server.url, customers, key="-", seconds=args.probe_seconds
                )
            finally:
                server.stop()
    bank_max, base_max = (
        result["bank_max"]["max_sustained_per_s"],
        result["baseline_max"]["max_sustained_per_s"],
    )
    result["ratio_to_baseline"] = round(bank_max / base_max, 3) if base_max else None
    if args.with_existing:
        result["existing"] = {}
        for name in ("events", "holds", "gateway"):
            began = time.monotonic()
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"bench.{name}")
            code = await proc.wait()
            result["existing"][name] = {"exit": code, "seconds": round(time.monotonic() - began, 1),
                                        "results": f"bench/results/{name}*.json"}  # fmt: skip
    return result


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Standard benchmark, {r['started']}",
        "",
        f"Machine: {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('memory_gb', '?')} GB, "
        f"Python {m['python']}; load average before {m['load_average']}. Load generator on the same machine.",
        "",
        "| what | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | ok (00/51) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("bank, steady", "bank_steady"), ("baseline, steady", "baseline_steady")):
        s = r[key]
        lines.append(f"| {label} | {s['offered_per_s']:.0f} | {s['achieved_per_s']} | {s.get('p50_ms')} | "
                     f"{s.get('p99_ms')} | {s.get('p99_9_ms')} | {s['ok_share']:.1%} |")  # fmt: skip
    lines += [
        "",
        "| max sustained (p99 < 100 ms, ≥ 99% 00/51) | authorisations/s |",
        "|---|---:|",
        f"| bank (gateway → cards → accounts) | {r['bank_max']['max_sustained_per_s']:.0f} |",
        f"| baseline (one FastAPI + asyncpg process) | {r['baseline_max']['max_sustained_per_s']:.0f} |",
        f"| **ratio bank / baseline** | **{r['ratio_to_baseline']}** |",
        "",
        "RSS after the steady run (MB): " + ", ".join(f"{k} {v}" for k, v in r["service_rss_mb"].items()),
        "",
        "CPU ms per authorisation in the steady run, until every consumer caught up: "
        + ", ".join(f"{k} {v}" for k, v in r.get("cpu_ms_per_authorisation", {}).items()),
        "",
        f"Reconciliation after the steady run: {r['bank_steady']['reconciliation_differences']} differences.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.standard", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--probe-seconds", type=float, default=10)
    parser.add_argument("--with-existing", action="store_true", help="also run bench.events/holds/gateway")
    args = parser.parse_args(argv)
    result = asyncio.run(standard(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"standard-{stamp}", "standard"):
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written to {RESULTS}/standard.json and standard.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
