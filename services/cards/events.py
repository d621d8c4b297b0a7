"""Events cards publishes on `cards.authorisations` (subject = account id). Never a PAN or CVC:
the card is named by its id and last four digits."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from shared import topics
from shared.events.envelope import EventData

AUTHORISATIONS_TOPIC = topics.CARD_AUTHORISATIONS


class MerchantData(BaseModel):
    id: str
    name: str
    mcc: str
    city: str
    country: str
    postcode: str | None = None


class _CardMoney(EventData):
    account_id: str
    card_id: str
    card_last4: str
    amount: int  # minor units, as presented (positive)
    currency: str
    merchant: MerchantData
    network_transaction_id: str | None
    processing_code: str


class _AuthorisationEvent(_CardMoney):
    authorisation_id: str
    stan: str
    rrn: str
    response_code: str


class AuthorisationApproved(_AuthorisationEvent):
    event_type: ClassVar[str] = "card.authorisation.approved"
    approval_code: str | None
    held_amount: int  # what accounts holds for it (0 for refunds and balance inquiries)
    stand_in: bool = False  # approved by the network in our place (an 0120 advice), force-posted


class AuthorisationDeclined(_AuthorisationEvent):
    event_type: ClassVar[str] = "card.authorisation.declined"
    decline_reason: str  # INSUFFICIENT_FUNDS | CARD_INACTIVE | CARD_BLOCKED | INVALID_CVC | OTHER
    decline_detail: str  # the finer outcome, e.g. daily_limit, mcc_blocked, issuer_unavailable


class AuthorisationReversed(_AuthorisationEvent):
    event_type: ClassVar[str] = "card.authorisation.reversed"
    reversed_amount: int  # by this reversal
    remaining_amount: int  # what the authorisation stands at now (0: fully reversed)


class _Settlement(_CardMoney):
    presentment_id: str
    authorisation_id: str | None


class TransactionSettled(_Settlement):
    event_type: ClassVar[str] = "card.transaction.settled"
    authorised_amount: int | None  # None: offline, no authorisation matched
    forced: bool  # posted without a hold to capture
    exceeds_tolerance: bool  # cleared above the authorisation plus the over-capture tolerance


class RefundSettled(_Settlement):
    event_type: ClassVar[str] = "card.refund.settled"
