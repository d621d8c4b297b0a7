"""The feed fold's reference lookups stay fast as the feed grows (decision 0047).

`ix_transactions_balance_refs` is a GIN index, and GIN's fast update keeps new entries in an unsorted
pending list that every search reads in full until a vacuum merges it: under a steady stream of card
payments each lookup of a ledger reference cost about a millisecond, once per movement in a batch.
Without fast update every entry goes straight into the index's tree (a little more work per insert)
and a lookup is a tree search. The pending list already there is merged now.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER INDEX transactions.ix_transactions_balance_refs SET (fastupdate = off)")
    op.execute("SELECT gin_clean_pending_list('transactions.ix_transactions_balance_refs'::regclass)")


def downgrade() -> None:
    op.execute("ALTER INDEX transactions.ix_transactions_balance_refs RESET (fastupdate)")
