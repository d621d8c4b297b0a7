"""Webhooks: subscriptions, secrets, deliveries and attempts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

S = "webhooks"
NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.LargeBinary, nullable=False),  # AES-GCM, services/webhooks/signing.py
        sa.Column("previous_secret", sa.LargeBinary),
        sa.Column("previous_secret_expires_at", TS),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("failing_since", TS),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("updated", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("status IN ('active', 'disabled', 'deleted')", name="status"),
        schema=S,
    )
    op.create_index("ix_webhooks_account", "webhooks", ["account_id", "created"], schema=S)
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Text, primary_key=True),  # msg_…: the webhook-id header, the same on every attempt
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False, unique=True),
        sa.Column("webhook_id", sa.Text, sa.ForeignKey(f"{S}.webhooks.id"), nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("event_time", TS, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        # attempts made before the last manual retry or recover: the schedule restarts from there
        sa.Column("retry_base", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=NOW),
        sa.Column("lease_until", TS),  # set while an attempt is in flight
        sa.Column("last_attempt_at", TS),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", TS),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
        sa.UniqueConstraint("webhook_id", "event_id", name="uq_deliveries_webhook_event"),
        schema=S,
    )
    # The claim's scan (repository.CLAIM_SQL): pending rows without a lease, in event order. Rows in
    # flight, waiting for a retry's lease to be reaped, or finished are not in it.
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["seq"],
        schema=S,
        postgresql_where=sa.text("status = 'pending' AND lease_until IS NULL"),
    )
    op.create_index(
        "ix_deliveries_in_flight",
        "deliveries",
        ["webhook_id"],
        schema=S,
        postgresql_where=sa.text("lease_until IS NOT NULL"),
    )
    op.create_index("ix_deliveries_webhook_created", "deliveries", ["webhook_id", "created"], schema=S)
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("delivery_id", sa.Text, sa.ForeignKey(f"{S}.deliveries.id"), nullable=False),
        sa.Column("webhook_id", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("succeeded", sa.Boolean, nullable=False),
        sa.Column("response_body", sa.Text),  # the first KiB
        schema=S,
    )
    op.create_index("ix_attempts_delivery", "attempts", ["delivery_id", "id"], schema=S)


def downgrade() -> None:
    op.drop_table("attempts", schema=S)
    op.drop_table("deliveries", schema=S)
    op.drop_table("webhooks", schema=S)
