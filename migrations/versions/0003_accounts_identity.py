"""Accounts identity: OAuth clients, authorization codes, refresh and access tokens, signing keys.

Authorization codes, refresh tokens and client secrets are stored only as
SHA-256 hashes (they are long random strings, so a fast hash is enough). Access
tokens are JWTs; their rows exist for Monzo's one-active-token rule: issuing a
new token for a (user, client) pair stamps `revoked_at` on the pair's previous
ones, and `GET /oauth2/revocations` publishes revoked tokens that have not yet
expired (docs/decisions/0006-access-token-revocation.md).

Every token carries a `grant_id`: the authorization (code or password login)
it descends from, through refreshes. Replaying a used code or refresh token
revokes the whole grant.

The bank's own mobile app is seeded as the first-party, public client.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

S = "accounts"
NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)
FIRST_PARTY_CLIENT = "oauthclient_mondo_app"


def client_column() -> sa.Column[str]:
    fk = sa.ForeignKey(f"{S}.oauth_clients.id", ondelete="CASCADE")
    return sa.Column("client_id", sa.Text, fk, nullable=False)


def user_column() -> sa.Column[str]:
    return sa.Column("user_id", sa.Text, sa.ForeignKey(f"{S}.users.id"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "oauth_clients",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text),
        sa.Column("redirect_uris", postgresql.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("confidential", sa.Boolean, nullable=False),
        sa.Column("first_party", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        # A confidential client authenticates with its secret; a public one has none.
        sa.CheckConstraint("confidential = (secret_hash IS NOT NULL)", name="secret_iff_confidential"),
        schema=S,
    )
    op.create_table(
        "auth_codes",
        sa.Column("code_hash", sa.Text, primary_key=True),
        sa.Column("grant_id", sa.Text, nullable=False, unique=True),
        client_column(),
        user_column(),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        schema=S,
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("grant_id", sa.Text, nullable=False, index=True),
        client_column(),
        user_column(),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("revoked_at", TS),
        schema=S,
    )
    op.create_table(
        "access_tokens",
        sa.Column("jti", sa.Text, primary_key=True),
        sa.Column("grant_id", sa.Text, nullable=False, index=True),
        client_column(),
        user_column(),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
        schema=S,
    )
    # The one active token of a (user, client) pair, found when the next one is issued.
    op.create_index(
        "ix_access_tokens_active_pair", "access_tokens", ["user_id", "client_id"], schema=S,
        postgresql_where=sa.text("revoked_at IS NULL"),
    )  # fmt: skip
    # The revocation list: revoked tokens, newest first, read by `since`.
    op.create_index(
        "ix_access_tokens_revoked", "access_tokens", ["revoked_at"], schema=S,
        postgresql_where=sa.text("revoked_at IS NOT NULL"),
    )  # fmt: skip
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, primary_key=True),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False, server_default=NOW),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        schema=S,
    )

    clients = sa.table(
        "oauth_clients",
        sa.column("id"), sa.column("name"), sa.column("redirect_uris", postgresql.ARRAY(sa.Text)),
        sa.column("confidential"), sa.column("first_party"),
        schema=S,
    )  # fmt: skip
    op.bulk_insert(
        clients,
        [
            {
                "id": FIRST_PARTY_CLIENT,
                "name": "Mondo",
                "redirect_uris": ["mondo://auth"],
                "confidential": False,
                "first_party": True,
            }
        ],
    )


def downgrade() -> None:
    for table in ("signing_keys", "access_tokens", "refresh_tokens", "auth_codes", "oauth_clients"):
        op.drop_table(table, schema=S)
