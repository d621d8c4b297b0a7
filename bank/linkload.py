"""`bank sim link-load`: the card path over the ISO 8583 link, measured (the simulator's link load
generator, simulator.iso8583.LinkLoad; the bank's processes, metrics and backlog read from here).

    .venv/bin/bank sim link-load --own-bank -n 1000 [--links 4] [--windows 8,16,32] [--seconds 20]
                                 [--rates 300] [--rate-seconds 20] [--out FILE]
    .venv/bin/bank sim link-load --population bench/results/population.json --iso8583-address HOST:PORT

With `--own-bank`: a whole bank of its own (bank.cluster: durable PostgreSQL in a temporary
folder, every service as its own process, pglog transport), --customers seeded through accounts'
public API, the bank left to settle; then, first with the services the card path does not need
stopped (the card path: accounts, cards, their relays, PostgreSQL, as bench.cards runs it), then with
the whole bank running again (its backlog consumed first):

1. max rate: closed loop, each of `--windows` 0100s in flight on each of `--links` signed-on links for
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
import re
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bank.faults import until_no_backlog
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


_METRIC = re.compile(
    r"^(card_issuer_unavailable_total|card_authorisation_batch_size_(?:sum|count)|"
    r"card_authorisation_stage_seconds_(?:sum|count))(\{[^}]*\})? ([0-9.e+-]+)$",
    re.M,
)


async def cards_metrics(url: str | None) -> dict[str, float]:
    """cards' 91s by cause, batch sizes and time per stage so far (from its /metrics)."""
    if url is None:
        return {}
    import httpx

    try:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return {}
    return {f"{name}{labels or ''}": float(value) for name, labels, value in _METRIC.findall(text)}


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    out: dict[str, Any] = {
        "why_91": {k.split('"')[1]: int(v) for k, v in d.items() if k.startswith("card_issuer") and v},
    }
    if count := d.get("card_authorisation_batch_size_count"):
        out["batches"] = int(count)
        out["mean_batch"] = round(d.get("card_authorisation_batch_size_sum", 0.0) / count, 1)
    stages = {}
    for k, v in d.items():
        if k.startswith("card_authorisation_stage_seconds_sum") and (n := d.get(k.replace("_sum", "_count"))):
            stages[k.split('"')[1]] = round(v / n * 1000, 2)
    out["mean_ms_per_stage"] = stages
    return out


class Phase:
    """One bank configuration measured: max rate (closed loop), then open loop at each rate."""

    def __init__(self, load: LinkLoad, cpu: Cpu, say: Callable[[str], None], cards_url: str | None,
                 database_url: str | None) -> None:  # fmt: skip
        self.load, self.cpu, self.say, self.cards_url, self.database_url = (
            load,
            cpu,
            say,
            cards_url,
            database_url,
        )

    async def settle(self) -> None:
        await asyncio.sleep(2)
        if self.database_url:
            await until_no_backlog(self.database_url, 300)

    async def _measured(self, name: str, run: Any, catch_up: bool = False) -> dict[str, Any]:
        metrics_before = await cards_metrics(self.cards_url)
        before, began = self.cpu.now(), time.monotonic()
        result = await run
        elapsed = time.monotonic() - began
        after = self.cpu.now()
        figures = result.figures(elapsed)
        figures["cpu_ms_per_authorisation"] = Cpu.per_authorisation(before, after, figures["authorisations"])
        busy = (after["machine"] - before["machine"]) / (elapsed * (os.cpu_count() or 1)) * 100
        figures["machine_cpu_busy_percent"] = round(busy, 1)
        figures |= metrics_delta(metrics_before, await cards_metrics(self.cards_url))
        if catch_up and self.database_url:
            caught = time.monotonic()
            figures["backlog_left"] = await until_no_backlog(self.database_url, 300)
            waited = time.monotonic() - caught
            figures["catch_up_seconds"] = round(waited, 2)
            approved = figures["codes"].get("00", 0)
            figures["whole_bank_sustained_per_second"] = round(approved / (elapsed + waited), 1)
        self.say(brief(name, figures))
        return figures

    async def run(self, label: str, *, links: int, windows: list[int], seconds: float, rates: list[float],
                  rate_seconds: float, catch_up: bool = False) -> dict[str, Any]:  # fmt: skip
        """Max rate at each of `windows` (in flight per link; the best approved rate is `max_rate`),
        then open loop at each of `rates`."""
        doc: dict[str, Any] = {}
        if seconds and windows:
            self.say(f"{label}: warming up (3 s) ...")
            await self.load.closed_loop(3, windows[0])
            tried = []
            for window in windows:
                await self.settle()
                self.say(f"{label}: max rate, {links} links x {window} in flight for {seconds:g} s ...")
                figures = await self._measured(
                    f"{label}, max rate over the link ({links} x {window} in flight)",
                    self.load.closed_loop(seconds, window), catch_up,
                )  # fmt: skip
                figures["window"] = window
                tried.append(figures)
            doc["max_rate"] = max(tried, key=lambda f: f["approved_per_second"])
            doc["max_rate_by_window"] = {f["window"]: f for f in tried}
        for rate in rates:
            await self.settle()
            self.say(f"{label}: open loop, {rate:g}/s for {rate_seconds:g} s ...")
            doc[f"offered_{rate:g}"] = await self._measured(
                f"{label}, {rate:g}/s offered over the link", self.load.open_loop(rate, rate_seconds)
            )
        return doc


async def measure(
    address: str, customers: list[Customer], network_key: str, *, links: int, windows: list[int],
    seconds: float, rates: list[float], rate_seconds: float, say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Against a bank someone else runs (`--population`): the link as it is."""
    load = await open_load(address, customers, network_key, links)
    phase = Phase(load, Cpu({}), say, None, None)
    try:
        doc = await phase.run("bank", links=links, windows=windows, seconds=seconds, rates=rates,
                              rate_seconds=rate_seconds)  # fmt: skip
    finally:
        load.close()
    return {"links": links, "windows": windows, "cards": len(customers), **doc}


async def open_load(address: str, customers: list[Customer], network_key: str, links: int) -> LinkLoad:
    host, _, port = address.rpartition(":")
    cards = [(c.pan, c.expiry, c.cvc) for c in customers if c.pan]
    load = LinkLoad(host or "127.0.0.1", int(port), network_key, cards, links=links)
    await load.open()
    return load


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
    windows: list[int], seconds: float, rates: list[float], rate_seconds: float,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    options: dict[str, Any] = {
        "links": links, "windows": windows, "seconds": seconds, "rates": rates, "rate_seconds": rate_seconds,
    }  # fmt: skip
    if not own_bank:
        assert population is not None
        pop = Population.load(population)
        return await measure(address, pop.customers, network_key, say=say, **options)

    from bank.cluster import BankCluster

    with tempfile.TemporaryDirectory(prefix="bank-linkload-") as tmp:
        os.chmod(tmp, 0o755)  # the embedded PostgreSQL's own user must be able to enter it
        cluster = BankCluster.for_load(Path(tmp), durable=True)
        say(f"starting a bank in {tmp} (durable PostgreSQL, every service) ...")
        async with cluster:
            began = time.monotonic()
            pop = await seed_population(cluster.base_url, customers, 1, signup_url=cluster.url("accounts"))
            say(f"{customers} customers seeded in {time.monotonic() - began:.0f} s; settling ...")
            await until_no_backlog(cluster.database_url, 300)
            doc: dict[str, Any] = {
                "bank": "own: bank.cluster, durable PostgreSQL, pglog", "links": links,
                "windows": windows, "cards": customers, "cpus": os.cpu_count(),
                "load_average_before": os.getloadavg(),
            }  # fmt: skip
            load = await open_load(cluster.iso8583_address, pop.customers, "dev-network-key", links)
            try:
                # 1. The card path alone: the services the link does not need are stopped (as bench.cards
                #    runs it: cards and accounts, their relays, PostgreSQL).
                others = ("gateway", "transactions", "webhooks", "notifications")
                for name in others:
                    cluster.kill(name, signal.SIGTERM)
                pids = {n: p.pid for n, p in cluster.procs.items() if n not in others}
                # (No backlog wait here: the stopped consumers' lag only grows.)
                phase = Phase(load, Cpu(pids), say, cluster.url("cards"), None)
                doc["card_path"] = await phase.run("card path (accounts, cards)", **options)
                # 2. The whole bank: the others back, their backlog consumed, then the same load; the
                #    max-rate run is followed by the catch-up (every outbox and consumer).
                for name in others:
                    cluster.start_service(name)
                await asyncio.gather(*(cluster.ready(name) for name in others))
                say("the whole bank again; letting it catch up ...")
                await until_no_backlog(cluster.database_url, 600)
                pids = {n: p.pid for n, p in cluster.procs.items()}
                phase = Phase(load, Cpu(pids), say, cluster.url("cards"), cluster.database_url)
                doc["whole_bank"] = await phase.run("whole bank", catch_up=True, **options)
            finally:
                load.close()
            return doc
