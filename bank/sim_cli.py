"""`bank sim`: the card-network simulator (seed a population, run a scenario, break the bank on purpose)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import typer

from simulator.scenarios import CHAOS_SCENARIOS, DEFAULT_DURATION, SCENARIOS

sim_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="The card-network simulator: load, failure, degradation."
)

BASE_URL = typer.Option("http://127.0.0.1:8000", "--base-url", help="the bank's gateway")
NETWORK_KEY = typer.Option(
    os.environ.get("GATEWAY_NETWORK_API_KEY", "dev-network-key"),
    "--network-key",
    help="the card network's key (x-network-key); default $GATEWAY_NETWORK_API_KEY or the dev key",
)
WIRE = typer.Option(
    "json", "--wire", help="json: the gateway's /network routes; iso8583: persistent pipelined ISO 8583 "
    "links to cards (docs/iso8583.md; clearing stays JSON)",
)  # fmt: skip
ISO8583_ADDRESS = typer.Option(
    f"127.0.0.1:{os.environ.get('CARDS_ISO8583_PORT', '8583')}", "--iso8583-address",
    help="cards' ISO 8583 link, host:port (`make run` prints it)",
)  # fmt: skip
LINKS = typer.Option(4, "--links", min=1, help="ISO 8583 links (connections) the network holds open")
SIGNUP_URL = typer.Option(
    None, "--signup-url", help="send sign-up/sign-in here (e.g. accounts, http://127.0.0.1:8001) to "
    "avoid the gateway's sign-up rate limit when seeding thousands",
)  # fmt: skip


def _ledger_checks(explicit: str | None, ledger: bool) -> Any:
    """`bank ledger verify` on the bank's database, for after a run (None: not checked)."""
    if not ledger:
        return None
    from bank.cluster import ledger_problems
    from shared.config import BankSettings, load

    url = explicit or load(BankSettings).database_url

    async def checks() -> list[str]:
        return await ledger_problems(url)

    return checks


@sim_app.command("seed")
def seed(
    customers: int = typer.Option(1_000, "--customers", "-n", min=1),
    seed_value: int = typer.Option(1, "--seed"),
    base_url: str = BASE_URL,
    signup_url: str | None = SIGNUP_URL,
    concurrency: int = typer.Option(16, "--concurrency", min=1),
    out: Path = typer.Option(Path("bench/results/population.json"), "--out", help="population file to write"),
) -> None:
    """Sign up N customers through the public API, top each up and issue each a card; save them."""
    import time

    from simulator.population import seed_population

    began = time.monotonic()
    pop = asyncio.run(
        seed_population(base_url, customers, seed_value, signup_url=signup_url, concurrency=concurrency)
    )
    pop.save(out)
    typer.echo(f"{customers} customers seeded in {time.monotonic() - began:.1f}s; written to {out}")


@sim_app.command("run")
def run(
    scenario: str = typer.Argument("day", help=f"one of: {', '.join(SCENARIOS)}"),
    rate: float = typer.Option(50.0, "--rate", help="arrivals per second (burst: the base rate)"),
    duration: float | None = typer.Option(None, "--duration", help="seconds of arrivals"),
    seed_value: int = typer.Option(1, "--seed"),
    customers: int = typer.Option(1_000, "--customers", "-n", min=1),
    base_url: str = BASE_URL,
    network_key: str = NETWORK_KEY,
    signup_url: str | None = SIGNUP_URL,
    population: Path | None = typer.Option(None, "--population", help="reuse (or write) a population file"),
    results: Path | None = typer.Option(None, "--results", help="default bench/results/sim-*"),
    live: bool = typer.Option(True, "--live/--no-live", help="the live terminal view"),
    ledger: bool = typer.Option(True, "--ledger/--no-ledger", help="run `bank ledger verify`'s checks after"),
    database_url: str | None = typer.Option(None, "--database-url", help="for the ledger checks"),
    settle_seconds: float = typer.Option(30.0, "--settle-seconds"),
    wire: str = WIRE,
    iso8583_address: str = ISO8583_ADDRESS,
    links: int = LINKS,
) -> None:
    """Run a scenario open-loop against a running bank, reconcile, and write the report.

    Exits 1 if reconciliation finds any difference."""
    from simulator.runner import RunConfig, run_scenario

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    cfg = RunConfig(
        scenario=scenario, rate=rate, duration=duration or DEFAULT_DURATION[scenario], seed=seed_value,
        customers=customers, base_url=base_url, network_key=network_key, signup_url=signup_url,
        population=population, results=results, live=live, settle_seconds=settle_seconds, wire=_wire(wire),
        iso8583_address=iso8583_address, links=links,
    )  # fmt: skip
    checks = _ledger_checks(database_url, ledger)
    result = asyncio.run(run_scenario(cfg, say=typer.echo, bank_checks=checks))
    _finish(result.report, result.differences, result.folder)


@sim_app.command("chaos")
def chaos(
    scenario: str = typer.Argument(..., help=f"one of: {', '.join(CHAOS_SCENARIOS)}, or all"),
    rate: float = typer.Option(20.0, "--rate"),
    duration: float = typer.Option(40.0, "--duration"),
    customers: int = typer.Option(50, "--customers", "-n", min=1),
    seed_value: int = typer.Option(1, "--seed"),
    fault_at: float = typer.Option(5.0, "--fault-at", help="seconds into the run"),
    fault_seconds: float | None = typer.Option(None, "--fault-seconds", help="default 10 (kafka-stop: 30)"),
    results: Path | None = typer.Option(None, "--results"),
    live: bool = typer.Option(True, "--live/--no-live"),
    wire: str = WIRE,
    links: int = LINKS,
) -> None:
    """Start a bank of its own, run `day` with a failure injected, reconcile and verify the ledger.

    Exits 1 on any difference."""
    from bank.chaos import run_chaos
    from simulator.runner import RunConfig

    names = list(CHAOS_SCENARIOS) if scenario == "all" else [scenario]
    if any(n not in CHAOS_SCENARIOS for n in names):
        raise typer.BadParameter(f"unknown chaos scenario {scenario!r}; one of {', '.join(CHAOS_SCENARIOS)}")
    failed = False
    for name in names:
        cfg = RunConfig(scenario="day", rate=rate, duration=duration, seed=seed_value, customers=customers,
                        live=live, settle_seconds=60.0, wire=_wire(wire), links=links,
                        results=(results / name) if results else None)  # fmt: skip
        result = asyncio.run(
            run_chaos(name, cfg, fault_at=fault_at, fault_seconds=fault_seconds, say=typer.echo)
        )
        typer.echo(f"chaos {name}: {result.report.get('chaos')}")
        failed |= bool(result.differences)
        _finish(result.report, result.differences, result.folder, exit_on_failure=False)
    if failed:
        raise typer.Exit(1)


OWN_BANK_HELP = "start a bank of its own (durable PostgreSQL, every service), seed --customers, stop it after"


@sim_app.command("link-load")
def link_load(
    population: Path | None = typer.Option(None, "--population", help="cards from `bank sim seed`"),
    own_bank: bool = typer.Option(False, "--own-bank", help=OWN_BANK_HELP),
    customers: int = typer.Option(1_000, "--customers", "-n", min=1),
    iso8583_address: str = ISO8583_ADDRESS,
    network_key: str = typer.Option(
        os.environ.get("CARDS_NETWORK_API_KEY", "dev-network-key"),
        "--network-key",
        help="cards' network key, signed on with (default $CARDS_NETWORK_API_KEY or the dev key)",
    ),
    links: int = LINKS,
    windows: str = typer.Option(
        "8,16,32", "--windows", help="messages in flight per link, one max-rate run each (the best counts)"
    ),
    seconds: float = typer.Option(20.0, "--seconds", help="the max-rate run (0: none)"),
    rates: str = typer.Option("300", "--rates", help="comma-separated offered authorisations/s ('': none)"),
    rate_seconds: float = typer.Option(20.0, "--rate-seconds"),
    out: Path | None = typer.Option(None, "--out", help="write the figures as JSON here"),
) -> None:
    """The card path over the ISO 8583 link: the most authorisations per second it answers (closed
    loop, each of --windows in flight on each of --links), then open-loop latency at each of --rates (from
    each message's due time). With --own-bank, also how long the rest of the bank (the feed,
    notifications, webhooks: every outbox and consumer) took to catch up after the max-rate run."""
    import json

    from bank.linkload import run_link_load

    if population is None and not own_bank:
        raise typer.BadParameter("give --population (a running bank's cards) or --own-bank")
    offered = [float(r) for r in rates.split(",") if r.strip()]
    doc = asyncio.run(run_link_load(
        population=population, own_bank=own_bank, customers=customers, address=iso8583_address,
        network_key=network_key, links=links, windows=[int(w) for w in windows.split(",") if w.strip()],
        seconds=seconds, rates=offered,
        rate_seconds=rate_seconds, say=typer.echo,
    ))  # fmt: skip
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        typer.echo(f"written to {out}")


def _wire(wire: str) -> str:
    if wire not in ("json", "iso8583"):
        raise typer.BadParameter(f"unknown wire {wire!r}; json or iso8583")
    return wire


def _finish(
    report: dict[str, Any], differences: list[str], folder: Path | None, exit_on_failure: bool = True
) -> None:
    auth = report["latency"].get("authorisation", {})
    if auth.get("count"):
        typer.echo(
            f"authorisations: {auth['count']} at {report['rates']['authorisations_per_s']}/s; "
            f"p50 {auth['p50_ms']:.1f} ms, p99 {auth['p99_ms']:.1f} ms, p99.9 {auth['p99_9_ms']:.1f} ms"
        )
    if folder is not None:
        typer.echo(f"report: {folder}/summary.md (and report.json, latency.png)")
    if differences:
        typer.echo(f"reconciliation: {len(differences)} differences", err=True)
        for d in differences:
            typer.echo(f"  {d}", err=True)
        if exit_on_failure:
            raise typer.Exit(1)
    else:
        typer.echo("reconciliation: clean")


if __name__ == "__main__":
    sim_app()
