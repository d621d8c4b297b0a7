"""Transactions: the feed (transactions, merchants, owners, spend today).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

S = "transactions"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "owners",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        schema=S,
    )
    op.create_table(
        "source_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("source_key", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("data", postgresql.JSONB, nullable=False),
        schema=S,
    )
    op.create_index("ix_source_events_source_key", "source_events", ["source_key"], schema=S)
    op.create_table(
        "ledger_points",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("ref", sa.Text, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("available", sa.BigInteger, nullable=False),
        schema=S,
    )
    op.create_index("ix_ledger_points_ref", "ledger_points", ["ref", "time"], schema=S)
    op.create_index("ix_ledger_points_account_time", "ledger_points", ["account_id", "time"], schema=S)
    op.create_table(
        "merchants",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("group_id", sa.Text, nullable=False),
        sa.Column("network_id", sa.Text, nullable=False),
        sa.Column("raw_name", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("mcc", sa.String(4), nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("emoji", sa.Text, nullable=False),
        sa.Column("logo", sa.Text, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("atm", sa.Boolean, nullable=False),
        sa.Column("address", postgresql.JSONB, nullable=False),
        sa.Column("doc", postgresql.JSONB, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("updated", TS, nullable=False),
        schema=S,
    )
    op.create_index("ix_merchants_group_id", "merchants", ["group_id"], schema=S)
    op.create_table(
        "transactions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("source_key", sa.Text, nullable=False, unique=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("created", TS, nullable=False),
        sa.Column("updated", TS, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("item", postgresql.JSONB, nullable=False),
        sa.Column("merchant_id", sa.Text, sa.ForeignKey(f"{S}.merchants.id")),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("balance_refs", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("account_balance", sa.BigInteger),
        sa.Column("balance_matched", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("spend_day", sa.Date, nullable=False),
        sa.Column("spend_amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
        sa.Column("metadata", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("annotated", TS),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("announced", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("body", postgresql.JSONB, nullable=False),
        sa.CheckConstraint("kind IN ('card_payment', 'atm_withdrawal', 'refund', 'topup')", name="kind"),
        schema=S,
    )
    # The feed's one hot query: an account's transactions in (created, id) order, a page at a time.
    op.create_index(
        "ix_transactions_account_created", "transactions", ["account_id", "created", "id"], schema=S
    )
    op.create_index(
        "ix_transactions_balance_refs", "transactions", ["balance_refs"], schema=S, postgresql_using="gin"
    )
    op.create_index(
        "ix_transactions_unannounced",
        "transactions",
        ["account_id"],
        schema=S,
        postgresql_where=sa.text("NOT announced"),
    )
    op.create_table(
        "spend_days",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False, server_default="0"),
        schema=S,
    )


def downgrade() -> None:
    for table in ("spend_days", "transactions", "merchants", "ledger_points", "source_events", "owners"):
        op.drop_table(table, schema=S)
