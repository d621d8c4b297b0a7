"""Notifications: devices, feed items, push deliveries, and the account owners seen in events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

S = "notifications"
NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("app_version", sa.Text),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("deactivated_at", TS),
        sa.Column("deactivation_reason", sa.Text),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("updated", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("platform IN ('apns', 'fcm')", name="platform"),
        sa.UniqueConstraint("platform", "token", name="uq_devices_platform_token"),
        schema=S,
    )
    op.create_index("ix_devices_user", "devices", ["user_id"], schema=S)

    # account -> owner, learnt from events and from accounts' answers (an account never changes owner).
    op.create_table(
        "account_owners",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        schema=S,
    )

    op.create_table(
        "feed_items",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("image_url", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("background_color", sa.Text),
        sa.Column("title_color", sa.Text),
        sa.Column("body_color", sa.Text),
        sa.Column("source", sa.Text, nullable=False),  # api | event
        sa.Column("client_id", sa.Text),
        sa.Column("source_event_id", sa.Text, unique=True),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        schema=S,
    )
    op.create_index("ix_feed_items_account_created", "feed_items", ["account_id", "created"], schema=S)

    # One row per notification per device: the durable send queue (decision 0012).
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("push_id", postgresql.UUID(as_uuid=False), nullable=False, unique=True),
        sa.Column("notification_key", sa.Text, nullable=False),
        sa.Column("device_id", sa.Text, sa.ForeignKey(f"{S}.devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("data", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=NOW),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("provider_id", sa.Text),
        sa.Column("event_time", TS),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("sent_at", TS),
        sa.CheckConstraint(
            "status IN ('pending', 'sent', 'failed', 'invalid_token', 'dropped')", name="status"
        ),
        sa.UniqueConstraint("notification_key", "device_id", name="uq_deliveries_notification_device"),
        schema=S,
    )
    # The send workers' claim: due pending rows in (next_attempt_at, id) order, read off this index.
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at", "id"],
        schema=S,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_deliveries_device", "deliveries", ["device_id"], schema=S)


def downgrade() -> None:
    op.drop_table("deliveries", schema=S)
    op.drop_table("feed_items", schema=S)
    op.drop_table("account_owners", schema=S)
    op.drop_table("devices", schema=S)
