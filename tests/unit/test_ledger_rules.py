"""The ledger's pure rules."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.accounts.ledger import (
    LedgerError,
    Line,
    capture_allowed,
    check_balanced,
    hold_decline_reason,
    spend_day_start,
    transfer,
)


@given(st.integers(min_value=1, max_value=10**12))
def test_a_transfer_always_balances(amount: int) -> None:
    lines = transfer("a", "b", amount, "GBP")
    check_balanced(lines)
    assert sum(line.amount for line in lines) == 0


@pytest.mark.parametrize("amount", [0, -1])
def test_a_transfer_moves_a_positive_amount(amount: int) -> None:
    with pytest.raises(LedgerError):
        transfer("a", "b", amount, "GBP")


def test_unbalanced_or_degenerate_entries_are_refused() -> None:
    with pytest.raises(LedgerError):
        check_balanced([Line("a", 5, "GBP"), Line("b", -4, "GBP")])
    with pytest.raises(LedgerError):
        check_balanced([Line("a", 5, "GBP"), Line("b", -5, "EUR")])  # balanced only across currencies
    with pytest.raises(LedgerError):
        check_balanced([Line("a", 0, "GBP"), Line("b", 0, "GBP")])
    with pytest.raises(LedgerError):
        check_balanced([Line("a", 0, "GBP")])
    with pytest.raises(LedgerError):
        transfer("a", "a", 5, "GBP")


@pytest.mark.parametrize(
    "available, amount, closed, currency, reason",
    [
        (100, 100, False, "GBP", None),
        (100, 101, False, "GBP", "insufficient_funds"),
        (0, 1, False, "GBP", "insufficient_funds"),
        (100, 1, True, "GBP", "account_closed"),
        (100, 1, False, "EUR", "currency_not_supported"),
    ],
)
def test_hold_decisions(available: int, amount: int, closed: bool, currency: str, reason: str | None) -> None:
    decision = hold_decline_reason(
        available=available, amount=amount, closed=closed, account_currency="GBP", currency=currency
    )
    assert decision == reason


def test_capture_tolerance() -> None:
    assert capture_allowed(held=1000, capture=1000, over_capture_tolerance=0)
    assert capture_allowed(held=1000, capture=400, over_capture_tolerance=0)  # partial clearing
    assert capture_allowed(held=1000, capture=1200, over_capture_tolerance=200)
    assert not capture_allowed(held=1000, capture=1201, over_capture_tolerance=200)
    assert not capture_allowed(held=1000, capture=0, over_capture_tolerance=200)


@pytest.mark.parametrize(
    "now, start",
    [
        # Winter (GMT): 04:00 London is 04:00 UTC.
        ("2026-01-15T03:59:00+00:00", "2026-01-14T04:00:00+00:00"),
        ("2026-01-15T04:00:00+00:00", "2026-01-15T04:00:00+00:00"),
        # Summer (BST): 04:00 London is 03:00 UTC.
        ("2026-07-15T02:59:00+00:00", "2026-07-14T03:00:00+00:00"),
        ("2026-07-15T03:00:00+00:00", "2026-07-15T03:00:00+00:00"),
        # The night the clocks go forward (29 March 2026, 01:00 UTC).
        ("2026-03-29T03:30:00+00:00", "2026-03-29T03:00:00+00:00"),
    ],
)
def test_the_spending_day_starts_at_4am_london(now: str, start: str) -> None:
    assert spend_day_start(datetime.fromisoformat(now)) == datetime.fromisoformat(start).astimezone(UTC)
