"""`bank sim link-load`: the card path over the ISO 8583 link, measured (simulator.iso8583.LinkLoad).

    .venv/bin/bank sim link-load --own-bank -n 1000 [--links 4] [--window 64] [--seconds 20]
                                 [--rates 300] [--rate-seconds 20] [--out FILE]
    .venv/bin/bank sim link-load --population bench/results/population.json --iso8583-address HOST:PORT

With `--own-bank`: a whole bank of its own (simulator.cluster: durable PostgreSQL in a temporary
folder, every service as its own process, pglog transport), --customers seeded through accounts'
public API, the bank left to settle; then

1. max rate: closed loop, `--window` 0100s in flight on each of `--links` signed-on links for
   `--seconds` (after a 3 s warm-up): answered and approved per second, latency percentiles, the
   CPU seconds of each process per authorisation; then the catch-up: how long until every outbox is
   published and every consumer (transactions, notifications, webhooks) has caught up, and the whole
   bank's sustained rate = approved / (seconds + catch-up);
2. for each of `--rates`: open loop, one 0100 due every 1/rate s for `--rate-seconds`, latency from
   its due time (a bank falling behind cannot hide it): p50/p99/p99.9/max and the codes.

The generator shares the machine with the bank; its own CPU is reported with the rest.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from simulator.iso8583 import LinkLoad
from simulator.population import Customer, Population, seed_population


def _cpu_of(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            times = [process.cpu_times(), *(c.cpu_times() for c in process.children(recursive=True))]
            out[name] = sum(t.user + t.system for t in times)
        except psutil.Error:
            out[name] = 0.0
    return out


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if (p.info.get("name") or "").startswith("postgres")]


class Cpu:
    """CPU seconds of the bank's processes, PostgreSQL, this generator and the whole machine."""

    def __init__(self, services: dict[str, int]) -> None:
        self.services = services

    def now(self) -> dict[str, float]:
        parts = _cpu_of(self.services)
        parts["postgres"] = sum(_cpu_of({str(pid): pid for pid in _postgres_pids()}).values())
        own = psutil.Process().cpu_times()
        parts["load generator"] = own.user + own.system
        machine = psutil.cpu_times()
        parts["machine"] = machine.user + machine.system + getattr(machine, "nice", 0.0)
        return parts

    @staticmethod
    def per_authorisation(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        spent = {k: after[k] - before[k] for k in after}
        machine = spent.pop("machine")
        spent["other processes"] = machine - sum(spent.values())
        return {k: round(v / n * 1000, 3) if n else 0.0 for k, v in spent.items()}


async def measure(
    address: str, customers: list[Customer], network_key: str, *, links: int, window: int, seconds: float,
    rates: list[float], rate_seconds: float, say: Callable[[str], None],
    pids: dict[str, int] | None = None, database_url: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    host, _, port = address.rpartition(":")
    cards = [(c.pan, c.expiry, c.cvc) for c in customers if c.pan]
    load = LinkLoad(host or "127.0.0.1", int(port), network_key, cards, links=links)
    await load.open()
    cpu = Cpu(pids or {})
    doc: dict[str, Any] = {"links": links, "window": window, "cards": len(cards), "cpus": os.cpu_count(),
                           "load_average_before": os.getloadavg()}  # fmt: skip
    try:
        if seconds:
            say("warming up (3 s) ...")
            await load.closed_loop(3, window)
            await asyncio.sleep(2)
            say(f"max rate: {links} links x {window} in flight for {seconds:g} s ...")
            before, began = cpu.now(), time.monotonic()
            result = await load.closed_loop(seconds, window)
            elapsed = time.monotonic() - began
            after = cpu.now()
            figures = result.figures(elapsed)
            figures["cpu_ms_per_authorisation"] = Cpu.per_authorisation(
                before, after, figures["authorisations"]
            )
            figures["machine_cpu_busy_percent"] = round(
                (after["machine"] - before["machine"]) / (elapsed * (os.cpu_count() or 1)) * 100, 1
            )
            say(brief("max rate over the link", figures))
            if database_url:
                from bank.faults import until_no_backlog

                caught = time.monotonic()
                left = await until_no_backlog(database_url, 300)
                catch_up = time.monotonic() - caught
                figures["catch_up_seconds"] = round(catch_up, 2)
                figures["backlog_left"] = left
                figures["whole_bank_sustained_per_second"] = round(
                    figures["codes"].get("00", 0) / (elapsed + catch_up), 1
                )
                say(f"  the rest of the bank caught up {catch_up:.1f} s later: whole bank sustained "
                    f"{figures['whole_bank_sustained_per_second']}/s")  # fmt: skip
            doc["max_rate"] = figures
        for rate in rates:
            await asyncio.sleep(3)
            if database_url:
                from bank.faults import until_no_backlog

                await until_no_backlog(database_url, 300)
            say(f"open loop: {rate:g}/s for {rate_seconds:g} s ...")
            before, began = cpu.now(), time.monotonic()
            result = await load.open_loop(rate, rate_seconds)
            figures = result.figures(time.monotonic() - began)
            figures["cpu_ms_per_authorisation"] = Cpu.per_authorisation(
                before, cpu.now(), figures["authorisations"]
            )
            say(brief(f"{rate:g}/s offered over the link", figures))
            doc[f"offered_{rate:g}"] = figures
    finally:
        load.close()
    return doc


def brief(name: str, r: dict[str, Any]) -> str:
    cpu = r.get("cpu_ms_per_authorisation", {})
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
    return (
        f"  {name}: {r['per_second']:.0f} answered/s ({r['approved_per_second']:.0f}/s approved), "
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, p99.9 {r['p99_9_ms']:.1f} ms, "
        f"max {r['max_ms']:.1f} ms; codes {r['codes']}"
        + (f"\n    CPU ms per authorisation: {parts}" if cpu else "")
    )


async def run_link_load(
    *, population: Path | None, own_bank: bool, customers: int, address: str, network_key: str, links: int,
    window: int, seconds: float, rates: list[float], rate_seconds: float, say: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    options: dict[str, Any] = {
        "links": links, "window": window, "seconds": seconds, "rates": rates, "rate_seconds": rate_seconds,
        "say": say,
    }  # fmt: skip
    if not own_bank:
        assert population is not None
        pop = Population.load(population)
        return await measure(address, pop.customers, network_key, **options)

    from bank.faults import until_no_backlog
    from simulator.cluster import Cluster

    with tempfile.TemporaryDirectory(prefix="bank-linkload-") as tmp:
        folder = Path(tmp)
        os.chmod(tmp, 0o755)  # the embedded PostgreSQL's own user must be able to enter it
        cluster = Cluster(folder, durable=True)
        say(f"starting a bank in {tmp} (durable PostgreSQL, every service) ...")
        async with cluster:
            began = time.monotonic()
            pop = await seed_population(cluster.base_url, customers, 1, signup_url=cluster.url("accounts"))
            say(f"{customers} customers seeded in {time.monotonic() - began:.0f} s; settling ...")
            await until_no_backlog(cluster.database_url, 300)
            pids = {name: proc.pid for name, proc in cluster.procs.items()}
            doc = await measure(
                cluster.iso8583_address, pop.customers, "dev-network-key", pids=pids,
                database_url=cluster.database_url, **options,
            )  # fmt: skip
            doc["bank"] = "own (simulator.cluster: durable PostgreSQL, every service, pglog)"
            return doc
