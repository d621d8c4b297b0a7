"""Each service schema's outbox, inbox and dead letters (created by migration 0001)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sqlalchemy as sa


@dataclass(frozen=True)
class EventTables:
    outbox: sa.Table
    inbox: sa.Table
    dead_letters: sa.Table


@cache
def event_tables(schema: str) -> EventTables:
    md = sa.MetaData(schema=schema)
    now = sa.text("now()")
    outbox = sa.Table(
        "outbox", md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("published_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    inbox = sa.Table(
        "inbox", md,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )  # fmt: skip
    dead_letters = sa.Table(
        "dead_letters", md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("event_type", sa.Text),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
    )  # fmt: skip
    return EventTables(outbox, inbox, dead_letters)
