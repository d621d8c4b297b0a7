"""Events accounts publishes (topics `accounts.accounts` and `accounts.ledger`; subject = account id)."""

from __future__ import annotations

from typing import ClassVar

from shared.events.envelope import EventData

ACCOUNTS_TOPIC = "accounts.accounts"
LEDGER_TOPIC = "accounts.ledger"


class AccountCreated(EventData):
    event_type: ClassVar[str] = "account.created"
    account_id: str
    user_id: str
    currency: str
    description: str


class _Money(EventData):
    account_id: str
    amount: int  # minor units; positive = money in, negative = money out
    currency: str
    balance: int  # settled balance after the movement
    available: int  # balance minus holds after the movement


class TopupCompleted(_Money):
    event_type: ClassVar[str] = "account.topup.completed"
    topup_id: str
    entry_id: str


class HoldPlaced(_Money):
    event_type: ClassVar[str] = "account.hold.placed"
    hold_id: str
    network_txn_id: str


class HoldReleased(_Money):
    event_type: ClassVar[str] = "account.hold.released"
    hold_id: str
    network_txn_id: str


class HoldExpired(_Money):
    event_type: ClassVar[str] = "account.hold.expired"
    hold_id: str
    network_txn_id: str


class HoldCaptured(_Money):
    event_type: ClassVar[str] = "account.hold.captured"
    hold_id: str
    network_txn_id: str
    entry_id: str
    held_amount: int


class AccountPosted(_Money):
    """A movement without a hold: forced clearing (debit) or a refund (credit)."""

    event_type: ClassVar[str] = "account.posted"
    entry_id: str
    network_txn_id: str
    kind: str  # force_debit | credit
