"""The issuer's decision on an authorisation, pure: no database, no network, no clock of its own.

Order (the issue's): card found, not expired, CVC right when given, card
active, controls pass. Only then is money asked for (a hold in accounts),
whose answer `after_hold` turns into the final outcome.

Every outcome names one of Mondo's decline reasons (`DeclineReason`) and a
finer `Outcome` value for events and support; `network.RESPONSE_CODES` maps
outcomes to ISO 8583 response codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from services.cards.vault import Expiry
from shared.spend_day import spend_day_start as spend_day_start

ATM_MCC = "6011"


class DeclineReason(StrEnum):
    """Mondo's `decline_reason` vocabulary."""

    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    CARD_INACTIVE = "CARD_INACTIVE"
    CARD_BLOCKED = "CARD_BLOCKED"
    INVALID_CVC = "INVALID_CVC"
    OTHER = "OTHER"


class Outcome(StrEnum):
    APPROVED = "approved"
    UNKNOWN_CARD = "unknown_card"
    CARD_EXPIRED = "card_expired"
    EXPIRY_MISMATCH = "expiry_mismatch"
    INVALID_CVC = "invalid_cvc"
    CARD_CANCELLED = "card_cancelled"
    CARD_FROZEN = "card_frozen"
    UNSUPPORTED_TRANSACTION = "unsupported_transaction"
    CURRENCY_NOT_SUPPORTED = "currency_not_supported"
    ATM_DISABLED = "atm_disabled"
    MCC_BLOCKED = "mcc_blocked"
    PER_TRANSACTION_LIMIT = "per_transaction_limit"
    DAILY_LIMIT = "daily_limit"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    ACCOUNT_CLOSED = "account_closed"
    ACCOUNT_REFUSED = "account_refused"  # accounts refused the hold request itself (4xx)
    ISSUER_UNAVAILABLE = "issuer_unavailable"


DECLINE_REASONS: dict[Outcome, DeclineReason] = {
    Outcome.UNKNOWN_CARD: DeclineReason.OTHER,
    Outcome.CARD_EXPIRED: DeclineReason.CARD_INACTIVE,
    Outcome.EXPIRY_MISMATCH: DeclineReason.OTHER,
    Outcome.INVALID_CVC: DeclineReason.INVALID_CVC,
    Outcome.CARD_CANCELLED: DeclineReason.CARD_INACTIVE,
    Outcome.CARD_FROZEN: DeclineReason.CARD_BLOCKED,
    Outcome.UNSUPPORTED_TRANSACTION: DeclineReason.OTHER,
    Outcome.CURRENCY_NOT_SUPPORTED: DeclineReason.OTHER,
    Outcome.ATM_DISABLED: DeclineReason.OTHER,
    Outcome.MCC_BLOCKED: DeclineReason.OTHER,
    Outcome.PER_TRANSACTION_LIMIT: DeclineReason.OTHER,
    Outcome.DAILY_LIMIT: DeclineReason.OTHER,
    Outcome.INSUFFICIENT_FUNDS: DeclineReason.INSUFFICIENT_FUNDS,
    Outcome.ACCOUNT_CLOSED: DeclineReason.CARD_INACTIVE,
    Outcome.ACCOUNT_REFUSED: DeclineReason.OTHER,
    Outcome.ISSUER_UNAVAILABLE: DeclineReason.OTHER,
}

# accounts' hold decline reasons (decision 0007)
_HOLD_DECLINES = {
    "insufficient_funds": Outcome.INSUFFICIENT_FUNDS,
    "account_closed": Outcome.ACCOUNT_CLOSED,
    "currency_not_supported": Outcome.CURRENCY_NOT_SUPPORTED,
}


class TransactionType(StrEnum):
    """The first two digits of the ISO 8583 processing code (field 3)."""

    PURCHASE = "00"
    CASH = "01"
    REFUND = "20"
    BALANCE_INQUIRY = "31"
    UNSUPPORTED = "??"

    @classmethod
    def of(cls, processing_code: str) -> TransactionType:
        try:
            return cls(processing_code[:2])
        except ValueError:
            return cls.UNSUPPORTED

    @property
    def spends(self) -> bool:
        return self in (TransactionType.PURCHASE, TransactionType.CASH)


class Action(StrEnum):
    """What an approval needs next."""

    NONE = "none"  # decided: a decline, or an approval that moves no money (a refund authorisation)
    HOLD = "hold"  # reserve the amount in accounts
    BALANCE = "balance"  # read the available balance (balance inquiry)


@dataclass(frozen=True, slots=True)
class Controls:
    per_transaction_limit: int | None = None
    daily_limit: int | None = None
    blocked_mccs: frozenset[str] = frozenset()
    atm_enabled: bool = True


@dataclass(frozen=True, slots=True)
class CardState:
    status: str  # active | frozen | cancelled
    expiry: Expiry
    currency: str
    controls: Controls


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the network asks for, reduced to what the decision needs."""

    transaction: TransactionType
    amount: int
    currency: str
    mcc: str
    presented_expiry: Expiry
    cvc_ok: bool | None  # None: no CVC in the message (chip and PIN, contactless)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    action: Action = Action.NONE

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.APPROVED

    @property
    def decline_reason(self) -> DeclineReason | None:
        return DECLINE_REASONS.get(self.outcome)


def _decline(outcome: Outcome) -> Decision:
    return Decision(outcome)


def decide(card: CardState | None, attempt: Attempt, *, now: datetime, spent_today: int = 0) -> Decision:
    """The decision before any money moves. `spent_today`: this card's spend since `spend_day_start`."""
    if card is None:
        return _decline(Outcome.UNKNOWN_CARD)
    if card.expiry.passed(now):
        return _decline(Outcome.CARD_EXPIRED)
    if attempt.presented_expiry != card.expiry:
        return _decline(Outcome.EXPIRY_MISMATCH)
    if attempt.cvc_ok is False:
        return _decline(Outcome.INVALID_CVC)
    if card.status == "cancelled":
        return _decline(Outcome.CARD_CANCELLED)
    kind = attempt.transaction
    # Money coming back is never refused for a frozen card (Monzo: refunds still arrive).
    if card.status != "active" and kind is not TransactionType.REFUND:
        return _decline(Outcome.CARD_FROZEN)
    if kind is TransactionType.UNSUPPORTED:
        return _decline(Outcome.UNSUPPORTED_TRANSACTION)
    if kind is TransactionType.REFUND:
        return Decision(Outcome.APPROVED)
    controls = card.controls
    if (kind is TransactionType.CASH or attempt.mcc == ATM_MCC) and not controls.atm_enabled:
        return _decline(Outcome.ATM_DISABLED)
    if attempt.mcc in controls.blocked_mccs:
        return _decline(Outcome.MCC_BLOCKED)
    if kind is TransactionType.BALANCE_INQUIRY:
        return Decision(Outcome.APPROVED, Action.BALANCE)
    if attempt.currency != card.currency:
        return _decline(Outcome.CURRENCY_NOT_SUPPORTED)
    if controls.per_transaction_limit is not None and attempt.amount > controls.per_transaction_limit:
        return _decline(Outcome.PER_TRANSACTION_LIMIT)
    if controls.daily_limit is not None and spent_today + attempt.amount > controls.daily_limit:
        return _decline(Outcome.DAILY_LIMIT)
    return Decision(Outcome.APPROVED, Action.HOLD)


def after_hold(status: str, decline_reason: str | None) -> Decision:
    """accounts' answer to the hold: `active` approves; a declined hold names why."""
    if status == "active":
        return Decision(Outcome.APPROVED)
    return _decline(_HOLD_DECLINES.get(decline_reason or "", Outcome.ACCOUNT_REFUSED))


def needs_daily_total(card: CardState | None, attempt: Attempt) -> bool:
    """Only a spending attempt on a card with a daily limit pays for summing today's spend."""
    return card is not None and card.controls.daily_limit is not None and attempt.transaction.spends


def is_long_stay(mcc: str) -> bool:
    """Car rental (3351-3500, 7512) and lodging (3501-3999, 7011): the bill comes at check-out."""
    return mcc in ("7011", "7512") or (mcc.isdigit() and 3351 <= int(mcc) <= 3999)


def hold_expires_at(mcc: str, now: datetime, *, days: int = 7, long_days: int = 31) -> datetime:
    return now + timedelta(days=long_days if is_long_stay(mcc) else days)


def over_capture_tolerance(authorised: int, mcc: str, *, percent: int, hospitality_percent: int,
                           hospitality_mccs: frozenset[str]) -> int:  # fmt: skip
    """How far above the authorised amount a clearing may capture (in minor units, rounded down)."""
    share = hospitality_percent if mcc in hospitality_mccs else percent
    return authorised * share // 100
