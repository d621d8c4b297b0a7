"""Cards: cards (PAN only as fingerprint + ciphertext), authorisations, reversals, presentments,
compensations (holds to release after an accounts call failed).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

S = "cards"
NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cards",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False, unique=True),
        sa.Column("pan_ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("expiry_month", sa.SmallInteger, nullable=False),
        sa.Column("expiry_year", sa.SmallInteger, nullable=False),
        sa.Column("cvc_digest", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("per_transaction_limit", sa.BigInteger),
        sa.Column("daily_limit", sa.BigInteger),
        sa.Column("blocked_mccs", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("atm_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("updated", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("status IN ('active', 'frozen', 'cancelled')", name="status"),
        sa.CheckConstraint("expiry_month BETWEEN 1 AND 12", name="expiry_month"),
        sa.CheckConstraint("per_transaction_limit IS NULL OR per_transaction_limit >= 0", name="txn_limit"),
        sa.CheckConstraint("daily_limit IS NULL OR daily_limit >= 0", name="daily_limit"),
        schema=S,
    )
    op.create_index("ix_cards_account_created", "cards", ["account_id", "created"], schema=S)
    op.create_index(
        "uq_cards_user_idempotency_key",
        "cards",
        ["user_id", "idempotency_key"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "authorisations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("network_transaction_id", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("card_id", sa.Text, sa.ForeignKey(f"{S}.cards.id")),
        sa.Column("account_id", sa.Text),
        sa.Column("processing_code", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("response_code", sa.String(2), nullable=False),
        sa.Column("approval_code", sa.Text),
        sa.Column("decline_reason", sa.Text),
        sa.Column("decline_detail", sa.Text),
        sa.Column("hold_id", sa.Text),
        sa.Column("held_amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("posted_amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reversed_amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("settled_amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("stand_in", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("merchant", postgresql.JSONB, nullable=False),
        sa.Column("stan", sa.Text, nullable=False),
        sa.Column("rrn", sa.Text, nullable=False),
        sa.Column("transmission_time", TS, nullable=False),
        sa.Column("request_digest", sa.Text, nullable=False),
        sa.Column("response", postgresql.JSONB, nullable=False),
        sa.Column("advice_response", postgresql.JSONB),
        sa.Column("expires_at", TS),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("updated", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("kind IN ('authorisation', 'advice')", name="kind"),
        sa.CheckConstraint("status IN ('approved', 'declined', 'reversed', 'settled')", name="status"),
        sa.CheckConstraint("amount >= 0 AND held_amount >= 0", name="amounts"),
        schema=S,
    )
    # Daily spend limits sum a card's approvals since the spending day began.
    op.create_index("ix_authorisations_card_created", "authorisations", ["card_id", "created"], schema=S)
    op.create_table(
        "reversals",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("network_transaction_id", sa.Text, nullable=False),
        sa.Column("replacement_amount", sa.BigInteger, nullable=False),
        sa.Column("authorisation_id", sa.Text, sa.ForeignKey(f"{S}.authorisations.id")),
        sa.Column("response", postgresql.JSONB, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.UniqueConstraint(
            "network_transaction_id", "replacement_amount", name="uq_reversals_network_transaction_id"
        ),
        schema=S,
    )
    op.create_table(
        "presentments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("network_transaction_id", sa.Text),
        sa.Column("authorisation_id", sa.Text, sa.ForeignKey(f"{S}.authorisations.id")),
        sa.Column("card_id", sa.Text, sa.ForeignKey(f"{S}.cards.id")),
        sa.Column("account_id", sa.Text),
        sa.Column("processing_code", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("result", postgresql.JSONB, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("status IN ('settled', 'rejected')", name="status"),
        schema=S,
    )
    op.create_table(
        "compensations",
        sa.Column("hold_id", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("outcome", sa.Text),
        sa.Column("attempts", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=NOW),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("completed", TS),
        sa.CheckConstraint("status IN ('pending', 'done')", name="status"),
        schema=S,
    )
    op.create_index(
        "ix_compensations_due",
        "compensations",
        ["next_attempt_at"],
        schema=S,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    for table in ("compensations", "presentments", "reversals", "authorisations", "cards"):
        op.drop_table(table, schema=S)
