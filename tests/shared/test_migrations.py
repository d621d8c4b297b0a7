"""Migrations on real PostgreSQL: from scratch, twice in a row, and from two processes at once."""

import subprocess
import sys

from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import current, upgrade

EXPECTED_SCHEMAS = {"accounts", "cards", "transactions", "webhooks", "notifications", "gateway", "events"}


def test_migrate_is_idempotent(pg_server: EmbeddedPostgres) -> None:
    url = pg_server.create_database("migrate_twice")
    try:
        upgrade(url)
        first = current(url)
        upgrade(url)
        assert current(url) == first is not None
        schemas = set(pg_server.psql("SELECT nspname FROM pg_namespace", "migrate_twice").split())
        assert EXPECTED_SCHEMAS <= schemas
        tables = pg_server.psql(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'outbox'", "migrate_twice"
        ).strip()
        assert tables == "6"
    finally:
        pg_server.drop_database("migrate_twice")


def test_two_concurrent_migrations_do_not_collide(pg_server: EmbeddedPostgres) -> None:
    url = pg_server.create_database("migrate_concurrently")
    script = "import sys; from bank.migrate import upgrade; upgrade(sys.argv[1])"
    try:
        procs = [
            subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
        assert [code for code, _ in results] == [0, 0, 0], results
        assert current(url) is not None
    finally:
        pg_server.drop_database("migrate_concurrently")
