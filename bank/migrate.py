"""`bank migrate`: Alembic `upgrade head` on the one environment in migrations/."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from shared.config import to_libpq

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    sync_url = "postgresql+psycopg://" + to_libpq(database_url).split("://", 1)[1]
    cfg.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    from sqlalchemy import create_engine, pool, text

    engine = create_engine(
        alembic_config(database_url).get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('public.alembic_version')")).scalar()
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar() if exists else None
    engine.dispose()
    return version
