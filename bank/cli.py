"""`bank`: the single front door for people running the bank."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from bank.accounts_cli import clients as clients_cli
from bank.accounts_cli import demo as demo_command
from bank.checker import check_command
from bank.sim_cli import sim_app
from shared.config import SERVICES, BankSettings, load, to_libpq

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Run and operate the Mondo-style bank.")
infra = typer.Typer(no_args_is_help=True, help="Local infrastructure: PostgreSQL and Apache Kafka.")
postgres = typer.Typer(no_args_is_help=True, help="The embedded PostgreSQL (from the pip wheel).")
kafka = typer.Typer(
    no_args_is_help=True, help="A local Apache Kafka broker (KRaft, jars from Maven Central)."
)
ledger = typer.Typer(no_args_is_help=True, help="The accounts ledger.")
app.add_typer(infra, name="infra")
app.add_typer(ledger, name="ledger")
app.add_typer(clients_cli, name="clients")
app.add_typer(sim_app, name="sim")
app.command("check")(check_command)
app.command("demo")(demo_command)
infra.add_typer(postgres, name="postgres")
infra.add_typer(kafka, name="kafka")


@app.command()
def up(
    kafka_bootstrap: str = typer.Option(
        "", "--kafka", help="Use this Kafka broker (host:port) instead of the embedded Postgres log."
    ),
) -> None:
    """Start PostgreSQL (unless DATABASE_URL is set), migrate, and run every service until Ctrl-C."""
    from bank.supervisor import run_bank

    settings = load(BankSettings)
    sys.exit(run_bank(settings, kafka_bootstrap=kafka_bootstrap or None))


@app.command()
def serve(name: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}")) -> None:
    """Run one service in the foreground (what `bank up` runs for each service)."""
    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    from shared.runtime import serve as serve_service

    serve_service(name, f"services.{name}.app:create_app")


@app.command()
def migrate() -> None:
    """Apply every migration (alembic upgrade head). Safe to run twice or concurrently."""
    from bank.migrate import current, upgrade

    url = load(BankSettings).database_url
    upgrade(url)
    typer.echo(f"database at revision {current(url)}")


@postgres.command("up")
def postgres_up() -> None:
    """Start the embedded PostgreSQL in the data folder and print its URL."""
    from bank.infra.postgres import EmbeddedPostgres

    settings = load(BankSettings)
    pg = EmbeddedPostgres(Path(settings.data_dir) / "postgres", settings.pg_port)
    pg.start()
    typer.echo(pg.create_database("bank"))


@postgres.command("down")
def postgres_down() -> None:
    """Stop the embedded PostgreSQL."""
    from bank.infra.postgres import EmbeddedPostgres

    settings = load(BankSettings)
    EmbeddedPostgres(Path(settings.data_dir) / "postgres", settings.pg_port).stop()
    typer.echo("stopped")


@kafka.command("up")
def kafka_up(port: int = typer.Option(9092, help="loopback port for the broker")) -> None:
    """Start a single-node Kafka broker in KRaft mode in the background."""
    from bank.infra import kafka as kafka_infra

    broker = kafka_infra.up(Path(load(BankSettings).data_dir) / "kafka", port=port)
    typer.echo(
        f"Kafka broker at {broker.bootstrap}; run the bank on it with: BANK_TRANSPORT=kafka "
        f"BANK_KAFKA_BOOTSTRAP={broker.bootstrap} make run"
    )


@kafka.command("down")
def kafka_down() -> None:
    """Stop the background Kafka broker."""
    from bank.infra import kafka as kafka_infra

    stopped = kafka_infra.down(Path(load(BankSettings).data_dir) / "kafka")
    typer.echo("stopped" if stopped else "no broker was running")


@ledger.command("verify")
def ledger_verify() -> None:
    """Recompute every balance from the postings; exit 1 on any mismatch."""
    import asyncio

    from bank.cluster import ledger_problems

    problems = asyncio.run(ledger_problems(load(BankSettings).database_url))
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("ledger verified: every entry balances and every balance matches its postings")


@app.command()
def psql() -> None:
    """Open psql on the bank's database."""
    from bank.infra.postgres import POSTGRES_BIN_PATH

    url = to_libpq(load(BankSettings).database_url)
    os.execv(str(POSTGRES_BIN_PATH / "psql"), ["psql", url])


if __name__ == "__main__":
    app()
