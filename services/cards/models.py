"""Cards' tables (schema `cards`) as ORM classes. No relationships: every read is explicit.

No column ever holds a clear PAN or CVC: `fingerprint` (HMAC of the PAN) finds a
card, `pan_ciphertext` is AES-GCM, `cvc_digest` is an HMAC (services/cards/vault.py).
The authorisation path reads rows with set-based SQL into these classes (decision 0030).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, LargeBinary, SmallInteger, String, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("cards")


class Card(Base):
    __tablename__ = "cards"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)  # the account's owner when the card was issued
    currency: Mapped[str] = mapped_column(String(3))  # the account's
    fingerprint: Mapped[str] = mapped_column(Text, unique=True)
    pan_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    last4: Mapped[str] = mapped_column(String(4))
    expiry_month: Mapped[int] = mapped_column(SmallInteger)
    expiry_year: Mapped[int] = mapped_column(SmallInteger)
    cvc_digest: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)  # active | frozen | cancelled
    per_transaction_limit: Mapped[int | None] = mapped_column(BigInteger)
    daily_limit: Mapped[int | None] = mapped_column(BigInteger)
    blocked_mccs: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    atm_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Authorisation(Base):
    """One row per network transaction id: the 0100 we answered, or the 0120 advice that told us."""

    __tablename__ = "authorisations"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    network_transaction_id: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text)  # authorisation | advice
    card_id: Mapped[str | None] = mapped_column(Text)
    account_id: Mapped[str | None] = mapped_column(Text)
    processing_code: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(Text)  # approved | declined | reversed | settled
    response_code: Mapped[str] = mapped_column(String(2))
    approval_code: Mapped[str | None] = mapped_column(Text)
    decline_reason: Mapped[str | None] = mapped_column(Text)
    decline_detail: Mapped[str | None] = mapped_column(Text)
    # The accounts hold backing this authorisation now (its network id: ours, or ours + a partial
    # reversal's suffix) and how much it holds.
    hold_id: Mapped[str | None] = mapped_column(Text)
    held_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    posted_amount: Mapped[int] = mapped_column(BigInteger, default=0)  # force-posted by an advice
    reversed_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    settled_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    stand_in: Mapped[bool] = mapped_column(Boolean, default=False)
    merchant: Mapped[dict[str, Any]] = mapped_column(JSONB)
    stan: Mapped[str] = mapped_column(Text)
    rrn: Mapped[str] = mapped_column(Text)
    transmission_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_digest: Mapped[str] = mapped_column(Text)  # tells a repeat from a clash of ids
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)  # the answer, replayed to repeats
    advice_response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Reversal(Base):
    __tablename__ = "reversals"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    network_transaction_id: Mapped[str] = mapped_column(Text)
    replacement_amount: Mapped[int] = mapped_column(BigInteger)  # unique with the network id
    authorisation_id: Mapped[str | None] = mapped_column(Text)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Presentment(Base):
    __tablename__ = "presentments"

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # the network's presentment id
    network_transaction_id: Mapped[str | None] = mapped_column(Text)
    authorisation_id: Mapped[str | None] = mapped_column(Text)
    card_id: Mapped[str | None] = mapped_column(Text)
    account_id: Mapped[str | None] = mapped_column(Text)
    processing_code: Mapped[str] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(Text)  # settled | rejected
    outcome: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Compensation(Base):
    """A hold that may exist in accounts and must not: released by a background job."""

    __tablename__ = "compensations"

    hold_id: Mapped[str] = mapped_column(Text, primary_key=True)  # the hold's network id
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="pending")  # pending | done
    outcome: Mapped[str | None] = mapped_column(Text)  # released | no_hold | not_active
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    completed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
