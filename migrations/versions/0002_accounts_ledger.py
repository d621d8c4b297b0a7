"""Accounts: customer and internal accounts, the double-entry ledger, holds, idempotency keys.

The database, not only the code, refuses an unbalanced journal entry (a
deferred constraint trigger checks every entry at commit) and any change to a
posting once written (postings are append-only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "accounts"
NOW = sa.text("now()")
INTERNAL = ("card_scheme_settlement", "topup_funding", "fees")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema=S,
    )
    op.create_index("uq_users_email", "users", [sa.text("lower(email)")], unique=True, schema=S)
    op.create_table(
        "accounts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, sa.ForeignKey(f"{S}.users.id"), index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False, server_default="GB"),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("closed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("kind IN ('customer', 'internal')", name="kind"),
        sa.CheckConstraint("held >= 0", name="held_not_negative"),
        schema=S,
    )
    op.create_table(
        "journal_entries",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), nullable=False),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.UniqueConstraint("kind", "reference", name="uq_journal_entries_kind_reference"),
        schema=S,
    )
    op.create_index(
        "ix_journal_entries_account_created", "journal_entries", ["account_id", "created"], schema=S
    )
    op.create_table(
        "postings",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("entry_id", sa.Text, sa.ForeignKey(f"{S}.journal_entries.id"), nullable=False, index=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), nullable=False, index=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
        schema=S,
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey(f"{S}.accounts.id"), nullable=False),
        sa.Column("network_txn_id", sa.Text, nullable=False, unique=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("decline_reason", sa.Text),
        sa.Column("captured_amount", sa.BigInteger),
        sa.Column("entry_id", sa.Text, sa.ForeignKey(f"{S}.journal_entries.id")),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'declined', 'captured', 'released', 'expired')", name="status"
        ),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        schema=S,
    )
    op.create_index(
        "ix_holds_active_expiry",
        "holds",
        ["expires_at"],
        schema=S,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index("ix_holds_account_created", "holds", ["account_id", "created"], schema=S)
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", postgresql.JSONB, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema=S,
    )

    op.execute(
        f"""
        CREATE FUNCTION {S}.check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE unbalanced record;
        BEGIN
            SELECT currency, sum(amount) AS total INTO unbalanced
            FROM {S}.postings WHERE entry_id = NEW.entry_id
            GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'journal entry % does not balance: % % left over',
                    NEW.entry_id, unbalanced.total, unbalanced.currency
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$;

        CREATE CONSTRAINT TRIGGER postings_balanced
            AFTER INSERT ON {S}.postings DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION {S}.check_entry_balanced();

        CREATE FUNCTION {S}.postings_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'postings are append-only; post a correcting entry instead'
                USING ERRCODE = 'restrict_violation';
        END $$;

        CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON {S}.postings
            FOR EACH ROW EXECUTE FUNCTION {S}.postings_are_append_only();
        """
    )
    columns = ("id", "kind", "description", "type", "currency")
    accounts = sa.table("accounts", *(sa.column(c) for c in columns), schema=S)
    op.bulk_insert(
        accounts,
        [
            {
                "id": f"int_{name}_gbp",
                "kind": "internal",
                "description": name.replace("_", " "),
                "type": "internal",
                "currency": "GBP",
            }
            for name in INTERNAL
        ],
    )


def downgrade() -> None:
    for table in ("idempotency_keys", "holds", "postings", "journal_entries", "accounts", "users"):
        op.drop_table(table, schema=S)
    op.execute(f"DROP FUNCTION IF EXISTS {S}.check_entry_balanced(), {S}.postings_are_append_only()")
