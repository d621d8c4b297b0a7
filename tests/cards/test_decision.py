"""The issuer's decision, pure: the order of the checks, controls, limits, hold expiry, tolerances."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.cards.decision import (
    DECLINE_REASONS,
    Action,
    Attempt,
    CardState,
    Controls,
    DeclineReason,
    Outcome,
    TransactionType,
    after_hold,
    decide,
    hold_expires_at,
    needs_daily_total,
    over_capture_tolerance,
    spend_day_start,
)
from services.cards.network import RESPONSE_CODES, ResponseCode
from services.cards.vault import Expiry

NOW = datetime(2026, 11, 26, 8, 15, tzinfo=UTC)
EXPIRY = Expiry(11, 2029)
CARD = CardState("active", EXPIRY, "GBP", Controls())
BUY = Attempt(TransactionType.PURCHASE, 1_915, "GBP", "5814", EXPIRY, True)


def outcome(card: CardState | None = CARD, attempt: Attempt = BUY, spent: int = 0) -> Outcome:
    return decide(card, attempt, now=NOW, spent_today=spent).outcome


def test_a_good_purchase_asks_for_a_hold() -> None:
    decision = decide(CARD, BUY, now=NOW)
    assert decision.approved and decision.action is Action.HOLD and decision.decline_reason is None
    assert decide(CARD, replace(BUY, cvc_ok=None), now=NOW).approved  # no CVC sent: not checked


def test_checks_run_in_the_issue_order() -> None:
    frozen_expired = replace(CARD, status="frozen", expiry=Expiry(1, 2024))
    assert outcome(None) is Outcome.UNKNOWN_CARD
    assert outcome(frozen_expired, replace(BUY, presented_expiry=Expiry(1, 2024))) is Outcome.CARD_EXPIRED
    assert outcome(replace(CARD, status="frozen"), replace(BUY, cvc_ok=False)) is Outcome.INVALID_CVC
    assert outcome(replace(CARD, status="frozen")) is Outcome.CARD_FROZEN
    assert outcome(replace(CARD, status="cancelled")) is Outcome.CARD_CANCELLED
    assert outcome(attempt=replace(BUY, presented_expiry=Expiry(12, 2029))) is Outcome.EXPIRY_MISMATCH


def test_controls() -> None:
    def with_controls(**kw: object) -> CardState:
        return replace(CARD, controls=replace(Controls(), **kw))

    cash = replace(BUY, transaction=TransactionType.CASH, mcc="6011")
    assert outcome(with_controls(atm_enabled=False), cash) is Outcome.ATM_DISABLED
    assert outcome(with_controls(atm_enabled=False), replace(BUY, mcc="6011")) is Outcome.ATM_DISABLED
    assert outcome(with_controls(atm_enabled=False)) is Outcome.APPROVED
    assert outcome(with_controls(blocked_mccs=frozenset({"5814"}))) is Outcome.MCC_BLOCKED
    assert outcome(with_controls(per_transaction_limit=1_914)) is Outcome.PER_TRANSACTION_LIMIT
    assert outcome(with_controls(per_transaction_limit=1_915)) is Outcome.APPROVED
    assert outcome(with_controls(daily_limit=5_000), spent=3_085) is Outcome.APPROVED
    assert outcome(with_controls(daily_limit=5_000), spent=3_086) is Outcome.DAILY_LIMIT
    assert outcome(attempt=replace(BUY, currency="EUR")) is Outcome.CURRENCY_NOT_SUPPORTED
    assert (
        outcome(attempt=replace(BUY, transaction=TransactionType.of("400000")))
        is Outcome.UNSUPPORTED_TRANSACTION
    )


def test_refunds_and_balance_inquiries_move_no_money() -> None:
    refund = replace(BUY, transaction=TransactionType.REFUND)
    frozen = replace(CARD, status="frozen", controls=Controls(per_transaction_limit=1))
    assert (
        decide(frozen, refund, now=NOW).action is Action.NONE and outcome(frozen, refund) is Outcome.APPROVED
    )
    inquiry = replace(BUY, transaction=TransactionType.BALANCE_INQUIRY, amount=0, mcc="6011")
    assert decide(CARD, inquiry, now=NOW).action is Action.BALANCE
    assert outcome(replace(CARD, controls=Controls(atm_enabled=False)), inquiry) is Outcome.ATM_DISABLED


def test_the_accounts_answer_decides_last() -> None:
    assert after_hold("active", None).approved
    assert after_hold("declined", "insufficient_funds").outcome is Outcome.INSUFFICIENT_FUNDS
    assert after_hold("declined", "account_closed").decline_reason is DeclineReason.CARD_INACTIVE
    assert after_hold("declined", "something new").outcome is Outcome.ACCOUNT_REFUSED


def test_every_outcome_has_a_response_code_and_every_decline_a_reason() -> None:
    assert set(RESPONSE_CODES) == set(Outcome)
    assert set(DECLINE_REASONS) == set(Outcome) - {Outcome.APPROVED}
    assert set(RESPONSE_CODES.values()) | {ResponseCode.DUPLICATE} == set(ResponseCode)


def test_daily_totals_are_only_summed_when_a_limit_needs_them() -> None:
    limited = replace(CARD, controls=Controls(daily_limit=10))
    assert needs_daily_total(limited, BUY) and not needs_daily_total(CARD, BUY)
    assert not needs_daily_total(limited, replace(BUY, transaction=TransactionType.REFUND))


def test_spending_days_start_at_4am_london() -> None:
    assert spend_day_start(datetime(2026, 11, 26, 8, 15, tzinfo=UTC)) == datetime(2026, 11, 26, 4, tzinfo=UTC)
    assert spend_day_start(datetime(2026, 11, 26, 3, 59, tzinfo=UTC)) == datetime(2026, 11, 25, 4, tzinfo=UTC)
    assert spend_day_start(datetime(2026, 7, 1, 12, tzinfo=UTC)) == datetime(2026, 7, 1, 3, tzinfo=UTC)  # BST


def test_lodging_and_car_rental_holds_last_31_days() -> None:
    for mcc in ("3351", "3500", "3501", "3999", "7011", "7512"):
        assert (hold_expires_at(mcc, NOW) - NOW).days == 31, mcc
    for mcc in ("3350", "4000", "5814", "7513", "6011"):
        assert (hold_expires_at(mcc, NOW) - NOW).days == 7, mcc


@given(st.integers(1, 10**9))
def test_over_capture_tolerance(authorised: int) -> None:
    def tolerance(mcc: str) -> int:
        hospitality = frozenset({"5812", "5813", "5814", "4121"})
        return over_capture_tolerance(
            authorised, mcc, percent=15, hospitality_percent=20, hospitality_mccs=hospitality
        )

    assert tolerance("5814") == tolerance("4121") == authorised * 20 // 100
    assert tolerance("5411") == authorised * 15 // 100
