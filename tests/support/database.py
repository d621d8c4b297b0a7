"""A database of one's own on the session's PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from bank.infra.postgres import EmbeddedPostgres
from bank.migrate import upgrade


@contextmanager
def migrated_database(pg: EmbeddedPostgres, prefix: str) -> Iterator[str]:
    """A new database on `pg` named `prefix` and a random suffix, every migration applied; its URL.
    Dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = pg.create_database(name)
    upgrade(url)
    try:
        yield url
    finally:
        pg.drop_database(name)
