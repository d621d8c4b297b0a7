"""Events: what transactions reads (its own models of other services' events: only the fields it
uses, extra fields ignored) and what it publishes on `transactions.feed` (docs/events.md)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from shared import topics
from shared.events.envelope import EventData

FEED_TOPIC = topics.TRANSACTIONS_FEED  # ours
# What we read (their names from the one list; tests/contract/test_event_models.py checks our models).
ACCOUNTS_TOPIC = topics.ACCOUNTS
LEDGER_TOPIC = topics.LEDGER
CARDS_TOPIC = topics.CARD_AUTHORISATIONS

ACCOUNT_CREATED = "account.created"
TOPUP_COMPLETED = "account.topup.completed"
HOLD_PLACED = "account.hold.placed"
ACCOUNT_POSTED = "account.posted"
APPROVED = "card.authorisation.approved"
DECLINED = "card.authorisation.declined"
REVERSED = "card.authorisation.reversed"
SETTLED = "card.transaction.settled"
REFUND_SETTLED = "card.refund.settled"
CARD_TYPES = (APPROVED, DECLINED, REVERSED, SETTLED, REFUND_SETTLED)
# Money between the bank's own accounts (decision 0037): each is one feed transaction of its account.
POT_DEPOSITED = "account.pot.deposited"
POT_WITHDRAWN = "account.pot.withdrawn"
PAYMENT_SENT = "account.payment.sent"
PAYMENT_RECEIVED = "account.payment.received"
POT_TYPES = (POT_DEPOSITED, POT_WITHDRAWN)
PAYMENT_TYPES = (PAYMENT_SENT, PAYMENT_RECEIVED)
TRANSFER_TYPES = (*POT_TYPES, *PAYMENT_TYPES)


class _Incoming(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AccountCreated(_Incoming):
    account_id: str
    user_id: str
    currency: str


class LedgerMovement(_Incoming):
    """account.hold.placed / account.posted / account.topup.completed: the balance after a movement."""

    account_id: str
    amount: int
    currency: str
    balance: int
    available: int
    network_txn_id: str | None = None
    topup_id: str | None = None
    transfer_id: str | None = None  # a pot move
    payment_id: str | None = None  # a payment between customers

    @property
    def ref(self) -> str | None:
        """The ledger reference the movement carries: what a transaction's `balance_refs` name."""
        return self.topup_id or self.transfer_id or self.payment_id or self.network_txn_id


class NetworkMerchant(_Incoming):
    id: str
    name: str
    mcc: str
    city: str = ""
    country: str = ""
    postcode: str | None = None


class CardEvent(_Incoming):
    """Any event on `cards.authorisations`; fields absent from a type stay None."""

    account_id: str
    card_last4: str = ""
    amount: int
    currency: str
    merchant: NetworkMerchant
    network_transaction_id: str | None = None
    processing_code: str = "000000"
    authorisation_id: str | None = None
    presentment_id: str | None = None
    decline_reason: str | None = None
    remaining_amount: int | None = None


class TopupCompleted(_Incoming):
    account_id: str
    amount: int
    currency: str
    topup_id: str


class PotMoved(_Incoming):
    """account.pot.deposited / account.pot.withdrawn; `amount` as the current account sees it."""

    account_id: str
    amount: int
    currency: str
    pot_id: str
    pot_name: str
    transfer_id: str


class PaymentMoved(_Incoming):
    """account.payment.sent / account.payment.received, as the subject's account sees it."""

    account_id: str
    amount: int
    currency: str
    payment_id: str
    reference: str = ""
    counterparty_user_id: str
    counterparty_name: str


Kind = Literal["card_payment", "atm_withdrawal", "refund", "topup", "pot_transfer", "p2p_payment"]
Change = Literal["created", "settled", "reversed", "annotated"]


class SpendToday(BaseModel):
    amount: int
    currency: str


class _FeedEvent(EventData):
    account_id: str
    user_id: str
    kind: Kind
    change: Change
    # `version` on the wire (docs/events.md); EventData.version is the payload's schema version.
    tx_version: int
    spend_today: SpendToday
    transaction: dict[str, Any]

    @model_serializer(mode="wrap")
    def _wire(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        doc: dict[str, Any] = handler(self)
        doc["version"] = doc.pop("tx_version")
        return doc


class TransactionCreated(_FeedEvent):
    event_type: ClassVar[str] = "transaction.created"


class TransactionUpdated(_FeedEvent):
    event_type: ClassVar[str] = "transaction.updated"
