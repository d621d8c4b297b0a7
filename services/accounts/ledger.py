"""The ledger's rules, pure: no database, no web framework.

Amounts are signed minor units from the point of view of the account: a
posting of +500 credits (increases) the account's balance, -500 debits it.
A journal entry's postings sum to zero per currency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.spend_day import spend_day_start as spend_day_start

CARD_SCHEME = "int_card_scheme_settlement_gbp"
TOPUP_FUNDING = "int_topup_funding_gbp"
FEES = "int_fees_gbp"


class LedgerError(ValueError):
    """A rule of the ledger was broken by the caller (a bug, never a customer's fault)."""


@dataclass(frozen=True, slots=True)
class Line:
    account_id: str
    amount: int
    currency: str


def transfer(from_account: str, to_account: str, amount: int, currency: str) -> list[Line]:
    """Move `amount` from one account to another: the two postings of a balanced entry."""
    if amount <= 0:
        raise LedgerError("a transfer moves a positive amount")
    if from_account == to_account:
        raise LedgerError("a transfer needs two different accounts")
    return [Line(from_account, -amount, currency), Line(to_account, amount, currency)]


def check_balanced(lines: list[Line]) -> None:
    if len(lines) < 2:
        raise LedgerError("a journal entry has at least two postings")
    totals: dict[str, int] = defaultdict(int)
    for line in lines:
        if line.amount == 0:
            raise LedgerError("a posting moves a non-zero amount")
        totals[line.currency] += line.amount
    unbalanced = {c: t for c, t in totals.items() if t != 0}
    if unbalanced:
        raise LedgerError(f"journal entry does not balance: {unbalanced}")


def hold_decline_reason(
    *, available: int, amount: int, closed: bool, account_currency: str, currency: str
) -> str | None:
    """Why a hold cannot be placed, or None when it can. Prepaid: never beyond the available balance."""
    if closed:
        return "account_closed"
    if currency != account_currency:
        return "currency_not_supported"
    if amount > available:
        return "insufficient_funds"
    return None


@dataclass(slots=True)
class Funds:
    """An account's money as read under its row lock: what a hold decision needs."""

    kind: str  # customer | internal
    currency: str
    balance: int
    held: int
    closed: bool

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class HoldRequest:
    account_id: str
    network_txn_id: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class HoldDecision:
    """Why a hold was declined (None: placed), and the account's money just after it."""

    decline_reason: str | None
    balance: int
    available: int


def decide_holds(funds: Mapping[str, Funds], requests: Sequence[HoldRequest]) -> list[HoldDecision]:
    """Each hold's fate, exactly as if the holds were placed one at a time in this order: a placed
    hold reserves its amount before the next is decided. Updates `funds` (every request's account
    must be in it) with what the placed holds reserve."""
    decisions = []
    for request in requests:
        account = funds[request.account_id]
        reason = hold_decline_reason(
            available=account.available, amount=request.amount, closed=account.closed,
            account_currency=account.currency, currency=request.currency,
        )  # fmt: skip
        if reason is None:
            account.held += request.amount
        decisions.append(HoldDecision(reason, account.balance, account.available))
    return decisions


def capture_allowed(*, held: int, capture: int, over_capture_tolerance: int) -> bool:
    """Clearing may differ from the authorisation (tips, fuel): up to the network's tolerance above it."""
    return 0 < capture <= held + max(over_capture_tolerance, 0)


# Pots and payments between customers (decision 0037) ---------------------------------------------

POT_DEPOSIT = "pot_deposit"
POT_WITHDRAWAL = "pot_withdrawal"
P2P_PAYMENT = "p2p_payment"
TRANSFER_ENTRY_KINDS = (POT_DEPOSIT, POT_WITHDRAWAL, P2P_PAYMENT)


def move_refusal(
    *,
    amount: int,
    available: int,
    currency: str,
    source_currency: str,
    destination_currency: str,
    source_closed: bool,
    destination_closed: bool,
) -> str | None:
    """Why money cannot move between two of the bank's own accounts (a pot or a customer's), or None.
    Prepaid: never beyond what the source has available; never into or out of a closed account; never
    across currencies."""
    if amount <= 0:
        raise LedgerError("a move is of a positive amount")
    if source_closed or destination_closed:
        return "account_closed"
    if not currency == source_currency == destination_currency:
        return "currency_mismatch"
    if amount > available:
        return "insufficient_funds"
    return None


def daily_limit_refusal(*, limit: int, sent_today: int, amount: int) -> str | None:
    """Whether a payment would take the sender past its daily limit (None: it would not)."""
    if sent_today + amount > limit:
        return "daily_limit_exceeded"
    return None
