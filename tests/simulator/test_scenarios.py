"""Scenario generation is pure: the same seed gives the same schedule, and every schedule is coherent."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.scenarios import (
    ADVICE,
    APP_KINDS,
    AUTHORISATION,
    CLEARING,
    PAYMENT,
    POT_DEPOSIT,
    POT_WITHDRAWAL,
    REPEAT,
    REVERSAL,
    SCENARIOS,
    day_shape,
    generate,
)

budgets = st.lists(st.integers(min_value=0, max_value=600_000), min_size=1, max_size=40)
scenario = st.sampled_from(SCENARIOS)
rate = st.floats(min_value=0.5, max_value=20)
duration = st.floats(min_value=1, max_value=20)
seed = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=25, deadline=None)
@given(scenario, rate, duration, seed, budgets)
def test_the_same_seed_gives_the_same_schedule(name: str, r: float, d: float, s: int, b: list[int]) -> None:
    first = generate(name, rate=r, duration=d, seed=s, budgets=b, prefix="T")
    again = generate(name, rate=r, duration=d, seed=s, budgets=list(b), prefix="T")
    assert first == again


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(("day", "soak")), seed)
def test_different_seeds_give_different_schedules(name: str, s: int) -> None:
    a = generate(name, rate=20, duration=10, seed=s, budgets=[300_000] * 10, prefix="T")
    b = generate(name, rate=20, duration=10, seed=s + 1, budgets=[300_000] * 10, prefix="T")
    assert a != b


@settings(max_examples=25, deadline=None)
@given(scenario, rate, duration, seed, budgets)
def test_schedules_are_coherent(name: str, r: float, d: float, s: int, b: list[int]) -> None:
    schedule = generate(name, rate=r, duration=d, seed=s, budgets=b, prefix="T")
    assert [m.at for m in schedule] == sorted(m.at for m in schedule)
    assert len({m.seq for m in schedule}) == len(schedule)
    first_at: dict[str, float] = {}
    planned: dict[int, int] = defaultdict(int)
    deposits: dict[str, tuple[int, int]] = {}  # dedupe id -> (card, amount)
    for m in schedule:
        assert 0 <= m.at
        assert 0 <= m.card < len(b)
        if m.kind in (AUTHORISATION, ADVICE):
            assert m.nid is not None and m.nid not in first_at, "one authorisation per network id"
            first_at[m.nid] = m.at
            assert m.at < d
        if m.kind in (REPEAT, REVERSAL):
            assert m.nid in first_at and first_at[m.nid] <= m.at, "after the message it repeats/reverses"
        if m.needs is not None:
            assert m.needs in first_at and first_at[m.needs] <= m.at
        if m.kind == CLEARING:
            assert m.presentment_id and m.amount > 0
        if m.kind == REVERSAL and m.replacement is not None:
            assert 0 < m.replacement < (m.original_amount or 0)
        if m.story != "insufficient" and m.kind in (AUTHORISATION, ADVICE, PAYMENT, POT_DEPOSIT):
            planned[m.card] += m.amount
        if m.kind in APP_KINDS:
            assert m.dedupe_id and m.dedupe_id not in first_at and m.amount > 0, "one dedupe_id per call"
            first_at[m.dedupe_id] = m.at
        if m.kind == PAYMENT:
            assert m.counterparty is not None and m.counterparty != m.card and 0 <= m.counterparty < len(b)
        if m.kind == POT_DEPOSIT:
            deposits[m.dedupe_id or ""] = (m.card, m.amount)
        if m.kind == POT_WITHDRAWAL:
            card, amount = deposits[m.needs or ""]
            assert card == m.card and m.amount <= amount, "takes out at most what its own deposit put in"
    presentments = [m.presentment_id for m in schedule if m.kind == CLEARING]
    assert len(presentments) == len(set(presentments))
    for card, amount in planned.items():
        assert amount <= b[card], "never plans more than a card's budget"
    if name in ("steady", "burst"):
        assert {m.kind for m in schedule} <= {AUTHORISATION}


def test_insufficient_funds_asks_for_more_than_the_budget() -> None:
    schedule = generate("day", rate=40, duration=20, seed=7, budgets=[100_000] * 5, prefix="T")
    asks = [m for m in schedule if m.story == "insufficient"]
    assert asks and all(m.amount > 100_000 for m in asks)


def test_the_day_mix_has_every_story() -> None:
    schedule = generate("day", rate=50, duration=60, seed=1, budgets=[500_000] * 200, prefix="T")
    stories = {m.story for m in schedule}
    for story in ("coffee", "restaurant", "fuel", "hotel", "online", "refund", "atm", "insufficient",
                  "cancelled", "duplicate", "offline", "advice", "payment", "pot"):  # fmt: skip
        assert story in stories
    kinds = {m.kind for m in schedule}
    assert kinds == {AUTHORISATION, REPEAT, REVERSAL, ADVICE, CLEARING, PAYMENT, POT_DEPOSIT, POT_WITHDRAWAL}


def test_burst_steps_to_five_times_the_rate() -> None:
    schedule = generate("burst", rate=10, duration=30, seed=1, budgets=[500_000] * 50, prefix="T")
    per_third = [sum(1 for m in schedule if lo <= m.at < lo + 10) for lo in (0, 10, 20)]
    assert per_third[0] == per_third[2] == 100
    assert per_third[1] == 500


def test_the_day_shape_averages_one() -> None:
    mean = sum(day_shape((i + 0.5) / 1000) for i in range(1000)) / 1000
    assert abs(mean - 1) < 1e-9
