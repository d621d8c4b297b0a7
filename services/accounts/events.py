"""Events accounts publishes (topics `accounts.accounts` and `accounts.ledger`; subject = account id)."""

from __future__ import annotations

from typing import ClassVar

from shared import topics
from shared.events.envelope import EventData

ACCOUNTS_TOPIC = topics.ACCOUNTS
LEDGER_TOPIC = topics.LEDGER


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


# Pots and payments between customers (decision 0037) ---------------------------------------------


class PotCreated(EventData):
    event_type: ClassVar[str] = "account.pot.created"
    account_id: str  # the current account the pot belongs to
    pot_id: str
    user_id: str
    name: str
    currency: str


class PotDeleted(EventData):
    event_type: ClassVar[str] = "account.pot.deleted"
    account_id: str
    pot_id: str
    user_id: str


class _PotMoved(_Money):
    """Money between a current account and one of its pots; `amount` as the current account sees it."""

    pot_id: str
    pot_name: str
    pot_balance: int  # the pot's balance after the move
    transfer_id: str  # the journal entry's reference: the feed's transaction key
    entry_id: str


class PotDeposited(_PotMoved):
    event_type: ClassVar[str] = "account.pot.deposited"


class PotWithdrawn(_PotMoved):
    event_type: ClassVar[str] = "account.pot.withdrawn"


class _PaymentMoved(_Money):
    """A payment between two customers as one of them sees it (subject: that one's account)."""

    payment_id: str
    entry_id: str
    reference: str
    counterparty_account_id: str
    counterparty_user_id: str
    counterparty_name: str


class PaymentSent(_PaymentMoved):
    event_type: ClassVar[str] = "account.payment.sent"


class PaymentReceived(_PaymentMoved):
    event_type: ClassVar[str] = "account.payment.received"
