"""Pots and payments between customers (issue 23; decision 0037).

A pot is money of its own in the ledger: a row in `accounts.accounts` (kind `pot`, balance on the row
like a customer's, no holds) beside its description in `accounts.pots`. A payment between two
customers is one journal entry (kind `p2p_payment`) recorded in `accounts.payments`. The feed gains the
two kinds of transaction these make.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

S = "accounts"
NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)
FEED_KINDS = "'card_payment', 'atm_withdrawal', 'refund', 'topup'"


def upgrade() -> None:
    op.drop_constraint("kind", "accounts", schema=S, type_="check")
    op.create_check_constraint("kind", "accounts", "kind IN ('customer', 'internal', 'pot')", schema=S)
    op.create_check_constraint(
        "pot_holds_nothing", "accounts", "kind <> 'pot' OR (held = 0 AND balance >= 0)", schema=S
    )
    op.create_table(
        "pots",
        sa.Column("id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), primary_key=True),
        sa.Column("current_account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), nullable=False),
        sa.Column("user_id", sa.Text, sa.ForeignKey(f"{S}.users.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("style", sa.Text, nullable=False),
        sa.Column("goal_amount", sa.BigInteger),
        sa.Column("type", sa.Text, nullable=False, server_default="default"),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("updated", TS, nullable=False, server_default=NOW),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.CheckConstraint("goal_amount IS NULL OR goal_amount > 0", name="goal_positive"),
        schema=S,
    )
    op.create_index("ix_pots_current_account", "pots", ["current_account_id", "created"], schema=S)
    op.create_table(
        "payments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, sa.ForeignKey(f"{S}.users.id"), nullable=False),
        sa.Column("source_account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), nullable=False),
        sa.Column("destination_account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reference", sa.Text, nullable=False, server_default=""),
        sa.Column("entry_id", sa.Text, sa.ForeignKey(f"{S}.journal_entries.id"), nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("source_account_id <> destination_account_id", name="two_accounts"),
        schema=S,
    )
    # The daily limit sums a sender's payments since the day began.
    op.create_index("ix_payments_source_created", "payments", ["source_account_id", "created"], schema=S)
    _feed_kinds(f"{FEED_KINDS}, 'pot_transfer', 'p2p_payment'")


def downgrade() -> None:
    op.execute("DELETE FROM transactions.transactions WHERE kind IN ('pot_transfer', 'p2p_payment')")
    _feed_kinds(FEED_KINDS)
    op.drop_table("payments", schema=S)
    op.drop_table("pots", schema=S)
    op.drop_constraint("pot_holds_nothing", "accounts", schema=S, type_="check")
    op.drop_constraint("kind", "accounts", schema=S, type_="check")
    op.create_check_constraint("kind", "accounts", "kind IN ('customer', 'internal')", schema=S)


def _feed_kinds(kinds: str) -> None:
    op.drop_constraint("kind", "transactions", schema="transactions", type_="check")
    op.create_check_constraint("kind", "transactions", f"kind IN ({kinds})", schema="transactions")
