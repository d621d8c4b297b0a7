"""Transactions' tables (schema `transactions`) as ORM classes (no relationships: every read is explicit),
and `TransactionRow`, a transaction row as the handlers read and write it (plain data, no session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Integer, String, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import service_metadata


class Base(DeclarativeBase):
    metadata = service_metadata("transactions")


class Owner(Base):
    """Who owns an account, from `account.created`."""

    __tablename__ = "owners"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))


class SourceEvent(Base):
    """Every event a transaction is folded from (the fold reads them all, in no particular order)."""

    __tablename__ = "source_events"

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    source_key: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)


class LedgerPoint(Base):
    """The account's available balance after one ledger movement, and the reference that moved it."""

    __tablename__ = "ledger_points"

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_id: Mapped[str] = mapped_column(Text)
    ref: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    available: Mapped[int] = mapped_column(BigInteger)


class Merchant(Base):
    __tablename__ = "merchants"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    group_id: Mapped[str] = mapped_column(Text)
    network_id: Mapped[str] = mapped_column(Text)
    raw_name: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    mcc: Mapped[str] = mapped_column(String(4))
    category: Mapped[str] = mapped_column(Text)
    emoji: Mapped[str] = mapped_column(Text)
    logo: Mapped[str] = mapped_column(Text)
    online: Mapped[bool] = mapped_column(Boolean)
    atm: Mapped[bool] = mapped_column(Boolean)
    address: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The merchant's Mondo JSON but `created`/`updated` (render.merchant_doc); reads add those two in SQL.
    doc: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Transaction(Base):
    __tablename__ = "transactions"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    source_key: Mapped[str] = mapped_column(Text, unique=True)
    account_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)  # None until `account.created` is seen
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(Text)
    item: Mapped[dict[str, Any]] = mapped_column(JSONB)  # feed.FeedItem.to_json()
    merchant_id: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    balance_refs: Mapped[list[str]] = mapped_column(ARRAY(Text))
    account_balance: Mapped[int | None] = mapped_column(BigInteger)
    balance_matched: Mapped[bool] = mapped_column(Boolean, default=False)
    spend_day: Mapped[date] = mapped_column(Date)
    spend_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    notes: Mapped[str] = mapped_column(Text, default="")
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONB, default=dict)
    annotated: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    announced: Mapped[bool] = mapped_column(Boolean, default=False)  # transaction.created emitted
    # The Mondo JSON of this version, merchant as an id (render.transaction_json): what GET answers.
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # What the customer attached (decision 0037): attachments' and receipts' JSON, as the body shows them.
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    receipts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)


class TransactionRef(Base):
    """One of a transaction's `balance_refs`, as a row: how the feed fold finds the transaction a ledger
    movement belongs to by its primary key (decision 0048). Written with the transaction."""

    __tablename__ = "transaction_refs"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    ref: Mapped[str] = mapped_column(Text, primary_key=True)
    transaction_id: Mapped[str] = mapped_column(Text, primary_key=True)


@dataclass(slots=True)
class TransactionRow:
    """The columns of `transactions` the handlers and PATCH work on (everything but `body`, which is
    rendered from these on every write)."""

    id: str
    source_key: str
    account_id: str
    user_id: str | None
    created: datetime
    updated: datetime
    kind: str
    item: dict[str, Any]
    merchant_id: str | None
    category: str
    balance_refs: list[str]
    account_balance: int | None
    balance_matched: bool
    spend_day: date
    spend_amount: int
    notes: str
    metadata: dict[str, str]
    annotated: datetime | None
    version: int
    announced: bool
    attachments: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)


class SpendDay(Base):
    """The running spend of one account on one local day (04:00 to 04:00 London)."""

    __tablename__ = "spend_days"

    account_id: Mapped[str] = mapped_column(Text, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger, default=0)


class Upload(Base):
    """A file a customer was given an upload URL for (decision 0037); `uploaded` once its bytes arrived."""

    __tablename__ = "uploads"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    file_name: Mapped[str] = mapped_column(Text)
    file_type: Mapped[str] = mapped_column(Text)
    content_length: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uploaded: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str] = mapped_column(Text)  # the transaction's id
    file_key: Mapped[str] = mapped_column(Text)
    file_url: Mapped[str] = mapped_column(Text)
    file_type: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deregistered: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Receipt(Base):
    __tablename__ = "receipts"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str] = mapped_column(Text)
    transaction_id: Mapped[str] = mapped_column(Text)
    doc: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
