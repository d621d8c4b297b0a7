"""Attachments and receipts on transactions (issue 23; decision 0037).

`uploads` are the files a customer was given an upload URL for; `attachments` tie an uploaded file to a
transaction; `receipts` are itemised receipts, one per (user, external id). A transaction's body shows
its attachments and receipts, from the two new columns.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

S = "transactions"
NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("file_type", sa.Text, nullable=False),
        sa.Column("content_length", sa.BigInteger, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("uploaded", TS),
        sa.CheckConstraint("content_length > 0", name="length_positive"),
        schema=S,
    )
    op.create_table(
        "attachments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        # a transaction id: the feed is a projection, so no foreign key
        sa.Column("external_id", sa.Text, nullable=False),
        sa.Column("file_key", sa.Text, sa.ForeignKey(f"{S}.uploads.key"), nullable=False),
        sa.Column("file_url", sa.Text, nullable=False),
        sa.Column("file_type", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("deregistered", TS),
        schema=S,
    )
    op.create_index("ix_attachments_external_id", "attachments", ["external_id", "created"], schema=S)
    op.create_table(
        "receipts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("external_id", sa.Text, nullable=False),
        sa.Column("transaction_id", sa.Text, nullable=False),
        sa.Column("doc", postgresql.JSONB, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("updated", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint("user_id", "external_id", name="uq_receipts_user_external_id"),
        schema=S,
    )
    op.create_index("ix_receipts_transaction_id", "receipts", ["transaction_id"], schema=S)
    for column in ("attachments", "receipts"):
        op.add_column(
            "transactions",
            sa.Column(column, postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
            schema=S,
        )


def downgrade() -> None:
    for column in ("receipts", "attachments"):
        op.drop_column("transactions", column, schema=S)
    for table in ("receipts", "attachments", "uploads"):
        op.drop_table(table, schema=S)
