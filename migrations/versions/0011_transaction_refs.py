"""A transaction's ledger references as rows, for the feed fold's lookup (decision 0048).

The fold finds the transaction a ledger movement belongs to by the movement's reference. It searched
`transactions.balance_refs` (an array) among the account's transactions: every probe read the whole
history of the account, so the feed consumer slowed down as the bank grew. `transaction_refs` holds
one row per (account, reference, transaction), probed by its primary key. The GIN index on the array,
which the fold could not use (its pending list made each probe slower than the scan), goes. A ledger
movement is looked up by (account, reference) too: `ledger_points` is indexed so, instead of by
(reference, time), which no query reads.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

S = "transactions"


def upgrade() -> None:
    op.create_table(
        "transaction_refs",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("transaction_id", sa.Text, primary_key=True),
        schema=S,
    )
    op.execute(
        f"INSERT INTO {S}.transaction_refs (account_id, ref, transaction_id)"
        f" SELECT DISTINCT account_id, unnest(balance_refs), id FROM {S}.transactions"
    )
    op.drop_index("ix_transactions_balance_refs", table_name="transactions", schema=S)
    op.drop_index("ix_ledger_points_ref", table_name="ledger_points", schema=S)
    op.create_index("ix_ledger_points_account_ref", "ledger_points", ["account_id", "ref"], schema=S)


def downgrade() -> None:
    op.drop_index("ix_ledger_points_account_ref", table_name="ledger_points", schema=S)
    op.create_index("ix_ledger_points_ref", "ledger_points", ["ref", "time"], schema=S)
    op.create_index(
        "ix_transactions_balance_refs", "transactions", ["balance_refs"], schema=S, postgresql_using="gin"
    )
    op.drop_table("transaction_refs", schema=S)
