"""Test infrastructure: a real PostgreSQL (from the wheel) and, for the tests that ask, real Kafka.

Each test session gets its own PostgreSQL server in a temporary folder and a
fresh, migrated database. Tests that touch the database start from empty
tables (`clean_db`), because the event tests must commit for real.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from bank.infra.kafka import KafkaBroker, ensure_jars
from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from shared.config import BankSettings
from shared.db import Database
from tests.support.database import migrated_database

# kafka-python logs every refused connection while a broker restarts; the tests assert outcomes instead.
logging.getLogger("kafka").setLevel(logging.CRITICAL)

SCHEMAS = ("accounts", "cards", "transactions", "webhooks", "notifications", "gateway", "events")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's temp root: each new pytest session as root makes that owner-only, which
    # would lock the server's own (non-root) user out of a concurrently running session's data.
    folder = Path(tempfile.mkdtemp(prefix="bank-test-pg-"))
    server = EmbeddedPostgres(folder / "data", free_port(), durable=False)
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A scratch folder the embedded PostgreSQL's own (non-root) user can enter: for a whole bank of
    the test's own (bank/cluster.py). Not under pytest's temp root, for the reason given above."""
    folder = Path(tempfile.mkdtemp(prefix="bank-test-work-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    with migrated_database(pg_server, "bank_test") as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str) -> BankSettings:
    return BankSettings(database_url=database_url, log_json=False, relay_poll_seconds=0.1)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def database(settings: BankSettings) -> AsyncIterator[Database]:
    # pre_ping: some tests restart the session PostgreSQL; the next test must not get a dead connection.
    db = Database(settings.database_url, pool_size=5, application_name="tests", pre_ping=True)
    db.seeds = await snapshot_seeds(db)  # type: ignore[attr-defined]
    yield db
    await db.dispose()


async def service_tables(db: Database) -> list[str]:
    async with db.read() as session:
        rows = await session.execute(
            text("SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(:schemas)"),
            {"schemas": list(SCHEMAS)},
        )
        return [f"{schema}.{table}" for schema, table in rows]


async def snapshot_seeds(db: Database) -> dict[str, list[dict[str, object]]]:
    """The rows migrations put in (internal ledger accounts, the first-party OAuth client…)."""
    seeds: dict[str, list[dict[str, object]]] = {}
    async with db.read() as session:
        for table in await service_tables(db):
            rows = [dict(r._mapping) for r in await session.execute(text(f"SELECT * FROM {table}"))]
            if rows:
                seeds[table] = rows
    return seeds


async def reset_database(db: Database, seeds: dict[str, list[dict[str, object]]]) -> None:
    """Back to just-migrated: every table emptied, then the migrations' seed rows put back."""
    tables = await service_tables(db)
    async with db.transaction() as session:
        await session.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        for table, rows in seeds.items():
            columns = list(rows[0])
            quoted = ", ".join(f'"{c}"' for c in columns)
            params = ", ".join(f":{c}" for c in columns)
            await session.execute(
                text(f"INSERT INTO {table} ({quoted}) VALUES ({params})"),
                rows,
            )


@pytest_asyncio.fixture(loop_scope="session")
async def db(database: Database) -> AsyncIterator[Database]:
    """The test's database, emptied first so every test starts from the same state."""
    await reset_database(database, database.seeds)  # type: ignore[attr-defined]
    yield database


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real Apache Kafka broker (KRaft). Never skipped: if it cannot start, the test fails."""
    ensure_jars()
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Keep the slow broker start-up out of the way of fast feedback: Kafka tests run last.
    # Whole banks on the session broker (the bank test under faults, the scale-out run) go after the
    # service-level Kafka tests: their killed replicas and consumer groups must not be in the way.
    def order(item: pytest.Item) -> int:
        if not item.get_closest_marker("kafka"):
            return 0
        path = str(item.path)
        whole_bank = "/tests/chaos/" in path or path.endswith("test_scale_out_kafka.py")
        return 2 if whole_bank else 1

    items.sort(key=order)
