"""Identity's tables (schema `accounts`, migration 0003) as ORM classes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Text, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from services.accounts.models import Base

TS = DateTime(timezone=True)


class OAuthClient(Base):
    __tablename__ = "oauth_clients"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    secret_hash: Mapped[str | None] = mapped_column(Text)  # None for public clients
    redirect_uris: Mapped[list[str]] = mapped_column(ARRAY(Text))
    confidential: Mapped[bool]
    first_party: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class AuthCode(Base):
    __tablename__ = "auth_codes"

    code_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    grant_id: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TS)
    used_at: Mapped[datetime | None] = mapped_column(TS)


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    grant_id: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TS)
    used_at: Mapped[datetime | None] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)


class AccessToken(Base):
    __tablename__ = "access_tokens"

    jti: Mapped[str] = mapped_column(Text, primary_key=True)
    grant_id: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)


class SigningKeyRow(Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(Text, primary_key=True)
    private_pem: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    active: Mapped[bool] = mapped_column(default=True)
