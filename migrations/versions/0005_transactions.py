"""Transactions: the feed (transactions, merchants, owners, spend today).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

S = "transactions"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
