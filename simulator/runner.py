"""One simulator run end to end: population, opening books (and the pots the app will use), schedule,
open-loop load (the network's messages and the customers' app calls), reconciliation, report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simulator import report as reporting
from simulator.app import App
from simulator.books import Books
from simulator.live import live_view
from simulator.loadgen import JsonWire, Network, Pool, Stats, Wire
from simulator.population import Population, seed_population
from simulator.reconcile import balances, reconcile
from simulator.scenarios import POT_DEPOSIT, POT_WITHDRAWAL, generate, summary

DEV_NETWORK_KEY = "dev-network-key"


@dataclass
class RunConfig:
    scenario: str = "day"
    rate: float = 50.0
    duration: float = 60.0
    seed: int = 1
    customers: int = 1_000
    base_url: str = "http://127.0.0.1:8000"
    network_key: str = DEV_NETWORK_KEY
    signup_url: str | None = None  # where sign-up and sign-in go (default: base_url)
    population: Path | None = None  # reuse a population file from `bank sim seed`
    results: Path | None = None  # the results folder (default bench/results/sim-<timestamp>)
    live: bool = True
    settle_seconds: float = 30.0
    timeout: float = 10.0  # the network's own timeout per message
    connections: int = 512
    # The network's wire: "json" (HTTP to the gateway's /network routes) or "iso8583" (persistent
    # pipelined links to cards' ISO 8583 listener; clearing still goes as JSON).
    wire: str = "json"
    iso8583_address: str = "127.0.0.1:8583"
    links: int = 4
    write_report: bool = True
    prefix: str = field(default_factory=lambda: f"S{int(time.time() * 1000) % 10**10:010d}")


@dataclass
class RunResult:
    report: dict[str, Any]
    differences: list[str]
    books: Books
    stats: Stats
    population: Population
    folder: Path | None


During = Callable[[float], Coroutine[Any, Any, dict[str, Any] | None]]
# The bank's own checks, run after reconciliation by whoever runs the bank (`bank sim` passes `bank
# ledger verify`): each problem is a sentence. The simulator only ever sees the bank through its wires.
BankChecks = Callable[[], Awaitable[list[str]]]
WIRES = ("json", "iso8583")


async def open_wire(cfg: RunConfig) -> Wire:
    """The network's wire for `cfg` (links open and signed on, for iso8583)."""
    pool = Pool(cfg.base_url, {"x-network-key": cfg.network_key}, size=cfg.connections)
    if cfg.wire == "json":
        return JsonWire(pool)
    if cfg.wire != "iso8583":
        raise ValueError(f"unknown wire {cfg.wire!r}; one of {', '.join(WIRES)}")
    from simulator.iso8583 import Links, LinkWire  # pyiso8583: a dev dependency

    host, _, port = cfg.iso8583_address.rpartition(":")
    links = Links(host or "127.0.0.1", int(port), cfg.network_key, count=cfg.links)
    await links.start()
    return LinkWire(links, JsonWire(pool).send, pool.close)


async def population_for(cfg: RunConfig, say: Callable[[str], None] = print) -> Population:
    if cfg.population is not None and cfg.population.exists():
        pop = Population.load(cfg.population)
        say(f"population: {len(pop.customers)} customers from {cfg.population}")
        return pop
    began = time.monotonic()
    pop = await seed_population(cfg.base_url, cfg.customers, cfg.seed, signup_url=cfg.signup_url)
    say(f"population: {cfg.customers} customers seeded in {time.monotonic() - began:.1f}s")
    if cfg.population is not None:
        pop.save(cfg.population)
    return pop


async def run_scenario(
    cfg: RunConfig,
    population: Population | None = None,
    *,
    during: During | None = None,
    say: Callable[[str], None] = print,
    wire: Wire | None = None,
    bank_checks: BankChecks | None = None,
) -> RunResult:
    """Run `cfg.scenario`; `during(start)` runs alongside the load (chaos), its result goes in the report.
    `wire`: an open wire to use (and close) instead of opening `cfg.wire`. `bank_checks`: the bank's
    own checks after reconciliation (their problems are differences, prefixed "ledger: ")."""
    pop = population or await population_for(cfg, say)
    customers = pop.customers
    start = await balances(cfg.base_url, customers)
    books = Books(start=list(start))
    schedule = generate(cfg.scenario, rate=cfg.rate, duration=cfg.duration, seed=cfg.seed, budgets=start,
                        prefix=cfg.prefix)  # fmt: skip
    say(f"{cfg.scenario}: {len(schedule)} messages planned {summary(schedule)}")
    stats = Stats()
    app = App(cfg.base_url, customers, timeout=cfg.timeout)
    if pots := {m.card for m in schedule if m.kind in (POT_DEPOSIT, POT_WITHDRAWAL)}:
        books.pot_start = await app.prepare_pots(pots)
    wire = wire or await open_wire(cfg)
    network = Network(wire, customers, books, stats, timeout=cfg.timeout, app=app)
    chaos: dict[str, Any] | None = None
    try:
        async with live_view(stats, f"bank sim {cfg.scenario}", len(schedule), enabled=cfg.live):
            if during is None:
                await network.run(schedule)
            else:
                side: list[asyncio.Task[dict[str, Any] | None]] = []

                def started(at: float) -> None:
                    side.append(asyncio.get_running_loop().create_task(during(at)))

                await network.run(schedule, on_start=started)
                chaos = await side[0] if side else None
    finally:
        await wire.aclose()
        await app.aclose()
    say(f"{cfg.scenario}: sent {stats.offered} in {stats.elapsed:.1f}s; reconciling")
    differences = await reconcile(books, customers, cfg.base_url, settle_seconds=cfg.settle_seconds)
    if bank_checks is not None:
        differences.extend(f"ledger: {p}" for p in await bank_checks())
    run = {k: v for k, v in asdict(cfg).items() if k not in ("network_key", "live", "write_report")}
    run = {k: (str(v) if isinstance(v, Path) else v) for k, v in run.items()}
    run["ledger_checked"] = bank_checks is not None
    run["customers"] = len(customers)
    extra: dict[str, Any] = {"planned": summary(schedule), "clearing_outcomes": dict(books.outcomes),
                             "app_moves": dict(books.app_moves)}  # fmt: skip
    if chaos is not None:
        extra["chaos"] = chaos
    if cfg.wire == "iso8583" and (links := getattr(wire, "links", None)) is not None:
        extra["links"] = {"links": links.count, "cuts": links.cuts, "reopened": links.reopened,
                          "lost_in_flight": links.lost_in_flight}  # fmt: skip
    doc = reporting.build(stats, run=run, differences=differences, extra=extra)
    folder = None
    if cfg.write_report:
        folder = reporting.write(doc, cfg.results or reporting.results_dir())
    return RunResult(doc, differences, books, stats, pop, folder)
