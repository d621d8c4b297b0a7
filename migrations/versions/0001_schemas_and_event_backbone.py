"""One schema per service, each with its outbox, inbox and dead letters; the embedded event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SERVICE_SCHEMAS = ("accounts", "cards", "transactions", "webhooks", "notifications", "gateway")
NOW = sa.text("now()")


def upgrade() -> None:
    for schema in (*SERVICE_SCHEMAS, "events"):
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")

    for schema in SERVICE_SCHEMAS:
        op.create_table(
            "outbox",
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("event_id", sa.Text, nullable=False, unique=True),
            sa.Column("topic", sa.Text, nullable=False),
            sa.Column("key", sa.Text, nullable=False),
            sa.Column("event_type", sa.Text, nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
            sa.Column("published_at", sa.DateTime(timezone=True)),
            schema=schema,
        )
        op.create_index(
            "ix_outbox_unpublished", "outbox", ["id"], schema=schema,
            postgresql_where=sa.text("published_at IS NULL"),
        )  # fmt: skip
        op.create_table(
            "inbox",
            sa.Column("consumer", sa.Text, primary_key=True),
            sa.Column("event_id", sa.Text, primary_key=True),
            sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
            schema=schema,
        )
        op.create_table(
            "dead_letters",
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
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
            sa.Column("resolved_at", sa.DateTime(timezone=True)),
            schema=schema,
        )

    # The embedded transport (pglog): an append-only, partitioned log with group offsets.
    op.create_table(
        "topics",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partitions", sa.Integer, nullable=False),
        schema="events",
    )
    op.create_table(
        "partitions",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False, server_default="0"),
        schema="events",
    )
    op.create_table(
        "log",
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema="events",
    )
    op.create_table(
        "consumer_offsets",
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema="events",
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema="events",
    )


def downgrade() -> None:
    for schema in (*SERVICE_SCHEMAS, "events"):
        op.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
