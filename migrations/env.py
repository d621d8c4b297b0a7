"""The one Alembic environment: every service schema plus `events` (the embedded transport).

Runs under a PostgreSQL advisory lock so that `bank migrate` is safe to start
from two processes at once: the second waits, then finds nothing to do.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

MIGRATION_LOCK = 7_263_540_001  # arbitrary, fixed: "bank migrations"

url = context.config.get_main_option("sqlalchemy.url")
assert url, "bank.migrate sets sqlalchemy.url"

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
    connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=None,
            version_table_schema="public",
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
engine.dispose()
