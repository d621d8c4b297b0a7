"""`decide_holds`, pure: a batch of holds decided exactly as if they were placed one at a time, in order."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from services.accounts.ledger import Funds, HoldDecision, HoldRequest, decide_holds


def funds(balance: int, held: int = 0, *, closed: bool = False, currency: str = "GBP") -> Funds:
    return Funds(kind="customer", currency=currency, balance=balance, held=held, closed=closed)


def hold(account_id: str, n: int, amount: int, currency: str = "GBP") -> HoldRequest:
    return HoldRequest(account_id, f"{account_id}-{n}", amount, currency)


def test_100_holds_of_70_against_700_place_exactly_the_first_10() -> None:
    money = {"a": funds(700)}
    decisions = decide_holds(money, [hold("a", n, 70) for n in range(100)])

    assert [d.decline_reason for d in decisions] == [None] * 10 + ["insufficient_funds"] * 90
    # Each placed hold reserved its amount before the next was decided.
    assert [d.available for d in decisions[:10]] == [630, 560, 490, 420, 350, 280, 210, 140, 70, 0]
    assert all(d.available == 0 and d.balance == 700 for d in decisions[10:])
    assert {d.balance for d in decisions} == {700}
    assert money["a"] == funds(700, held=700)


def test_a_smaller_hold_after_a_declined_one_is_still_placed() -> None:
    """Arrival order decides, not size: a decline reserves nothing, so what fits later is placed."""
    money = {"a": funds(100)}
    decisions = decide_holds(money, [hold("a", 1, 80), hold("a", 2, 30), hold("a", 3, 20), hold("a", 4, 1)])
    assert decisions == [
        HoldDecision(None, 100, 20),
        HoldDecision("insufficient_funds", 100, 20),
        HoldDecision(None, 100, 0),
        HoldDecision("insufficient_funds", 100, 0),
    ]
    assert money["a"].held == 100


def test_a_hold_of_exactly_the_available_amount_is_placed() -> None:
    money = {"a": funds(1_000, held=400)}
    assert decide_holds(money, [hold("a", 1, 600), hold("a", 2, 1)]) == [
        HoldDecision(None, 1_000, 0),
        HoldDecision("insufficient_funds", 1_000, 0),
    ]
    assert money["a"].held == 1_000


def test_accounts_are_independent() -> None:
    money = {"a": funds(100), "b": funds(1_000, held=100), "c": funds(0)}
    requests = [
        hold("a", 1, 60),
        hold("b", 1, 500),
        hold("a", 2, 60),  # a has 40 left
        hold("c", 1, 1),
        hold("b", 2, 400),  # b: exactly what is left
        hold("a", 3, 40),
        hold("b", 3, 1),
    ]
    assert decide_holds(money, requests) == [
        HoldDecision(None, 100, 40),
        HoldDecision(None, 1_000, 400),
        HoldDecision("insufficient_funds", 100, 40),
        HoldDecision("insufficient_funds", 0, 0),
        HoldDecision(None, 1_000, 0),
        HoldDecision(None, 100, 0),
        HoldDecision("insufficient_funds", 1_000, 0),
    ]
    assert money == {"a": funds(100, held=100), "b": funds(1_000, held=1_000), "c": funds(0)}


def test_a_closed_account_and_another_currency_are_declined_and_reserve_nothing() -> None:
    money = {"closed": funds(5_000, closed=True), "gbp": funds(5_000)}
    requests = [
        hold("closed", 1, 100),
        hold("closed", 2, 100, "EUR"),  # closed comes first
        hold("gbp", 1, 100, "EUR"),
        hold("gbp", 2, 100),
        hold("gbp", 3, 10_000, "USD"),  # the currency, not the amount
    ]
    assert decide_holds(money, requests) == [
        HoldDecision("account_closed", 5_000, 5_000),
        HoldDecision("account_closed", 5_000, 5_000),
        HoldDecision("currency_not_supported", 5_000, 5_000),
        HoldDecision(None, 5_000, 4_900),
        HoldDecision("currency_not_supported", 5_000, 4_900),
    ]
    assert money == {"closed": funds(5_000, closed=True), "gbp": funds(5_000, held=100)}


def test_balance_and_available_after_each_hold_start_from_what_is_already_held() -> None:
    money = {"a": funds(1_000, held=300)}
    decisions = decide_holds(money, [hold("a", 1, 200), hold("a", 2, 501), hold("a", 3, 500)])
    assert [(d.decline_reason, d.balance, d.available) for d in decisions] == [
        (None, 1_000, 500),
        ("insufficient_funds", 1_000, 500),
        (None, 1_000, 0),
    ]


def test_an_empty_batch_decides_nothing_and_changes_nothing() -> None:
    money = {"a": funds(10)}
    assert decide_holds(money, []) == []
    assert money == {"a": funds(10)}


# -- the property: a batch is the same as one request at a time --------------------------------------------

ACCOUNTS = ("a", "b", "c", "d")

account_funds = st.builds(
    lambda balance, held, closed, currency: funds(
        balance, min(held, balance), closed=closed, currency=currency
    ),
    balance=st.integers(0, 2_000),
    held=st.one_of(st.just(0), st.integers(0, 2_000)),
    closed=st.sampled_from([False] * 5 + [True]),
    currency=st.sampled_from(["GBP"] * 5 + ["EUR"]),
)
requests = st.lists(
    st.builds(
        HoldRequest,
        account_id=st.sampled_from(ACCOUNTS),
        network_txn_id=st.text("xyz0123", min_size=1, max_size=4),
        amount=st.one_of(st.integers(1, 300), st.integers(1, 3_000)),
        currency=st.sampled_from(["GBP"] * 6 + ["EUR"]),
    ),
    max_size=40,
)


def one_at_a_time(
    start: Mapping[str, Funds], batch: list[HoldRequest]
) -> tuple[list[HoldDecision], dict[str, Funds]]:
    money = copy.deepcopy(dict(start))
    decisions = []
    for request in batch:
        (decision,) = decide_holds(money, [request])
        decisions.append(decision)
    return decisions, money


@given(start=st.fixed_dictionaries({a: account_funds for a in ACCOUNTS}), batch=requests)
def test_a_batch_is_decided_as_its_requests_one_at_a_time(
    start: dict[str, Funds], batch: list[HoldRequest]
) -> None:
    money = copy.deepcopy(start)
    decisions = decide_holds(money, batch)

    expected, expected_money = one_at_a_time(start, batch)
    assert decisions == expected
    assert money == expected_money

    # And what that means, independently of decide_holds: a hold is placed iff the account is open,
    # in its currency, and the amount fits in what the holds placed before it left available.
    available = {a: f.balance - f.held for a, f in start.items()}
    for request, decision in zip(batch, decisions, strict=True):
        account = start[request.account_id]
        if account.closed:
            reason: str | None = "account_closed"
        elif request.currency != account.currency:
            reason = "currency_not_supported"
        elif request.amount > available[request.account_id]:
            reason = "insufficient_funds"
        else:
            reason = None
            available[request.account_id] -= request.amount
        assert decision == HoldDecision(reason, account.balance, available[request.account_id])
    for a, f in start.items():
        assert money[a].held == f.balance - available[a]
        assert (money[a].balance, money[a].closed, money[a].currency) == (f.balance, f.closed, f.currency)
        assert money[a].available >= 0  # never beyond what was available
