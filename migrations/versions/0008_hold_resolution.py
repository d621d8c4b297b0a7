"""Resolving provisional holds (decision 0031): accounts' holds that cards has not yet been seen to
record, and cards' voided authorisations (a network id closed unrecorded).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

S = "accounts"


def upgrade() -> None:
    op.create_table(
        "unconfirmed_holds",
        sa.Column("network_txn_id", sa.Text, primary_key=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        schema=S,
    )
    op.create_index("ix_unconfirmed_holds_created", "unconfirmed_holds", ["created"], schema=S)
    _authorisation_checks(kinds="'authorisation', 'advice', 'voided'", statuses=f"{STATUSES}, 'voided'")


def downgrade() -> None:
    op.execute("DELETE FROM cards.authorisations WHERE kind = 'voided'")
    _authorisation_checks(kinds="'authorisation', 'advice'", statuses=STATUSES)
    op.drop_table("unconfirmed_holds", schema=S)


STATUSES = "'approved', 'declined', 'reversed', 'settled'"


def _authorisation_checks(*, kinds: str, statuses: str) -> None:
    for name, allowed in (("kind", kinds), ("status", statuses)):
        op.drop_constraint(name, "authorisations", schema="cards", type_="check")
        op.create_check_constraint(name, "authorisations", f"{name} IN ({allowed})", schema="cards")
