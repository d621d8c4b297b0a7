"""Past capacity: the gateway's priority admission and the service client's retry budget (decision 0036)."""

from __future__ import annotations

import pytest

from services.gateway.shedding import Shedder
from shared.errors import BankError
from shared.http import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_authorisations_over_the_limit_are_refused_at_the_front_with_a_retryable_429() -> None:
    shedder = Shedder(initial=2, minimum=1, refusal_pause=0.0, clock=Clock())
    shedder.admit("network")
    shedder.admit("network")
    with pytest.raises(BankError) as refused:
        shedder.admit("network")
    assert refused.value.status == 429 and refused.value.code == "rate_limited.overloaded"
    assert refused.value.headers == {"Retry-After": "1"}
    shedder.done("network", 200)
    shedder.admit("network")  # a place is free again


def test_critical_messages_are_never_refused() -> None:
    clock = Clock()
    shedder = Shedder(initial=1, minimum=1, app_limit=1, clock=clock)
    shedder.admit("network")
    with pytest.raises(BankError):
        shedder.admit("network")  # authorisations are being refused now
    for _ in range(1000):
        shedder.admit("critical")  # reversals, advices, clearing: always
    assert shedder.in_flight["critical"] == 1000


def test_app_traffic_is_refused_first_while_authorisations_are_refused() -> None:
    clock = Clock()
    shedder = Shedder(initial=1, minimum=1, app_limit=100, app_quiet=1.0, clock=clock)
    shedder.admit("app")
    shedder.done("app", 200)
    shedder.admit("network")
    with pytest.raises(BankError):
        shedder.admit("network")
    with pytest.raises(BankError) as refused:
        shedder.admit("app")
    assert refused.value.status == 503 and refused.value.code == "service_unavailable.overloaded"
    clock.now += 1.5  # no authorisation refused for a while: app traffic is served again
    shedder.admit("app")


def test_app_traffic_has_its_own_limit() -> None:
    shedder = Shedder(app_limit=2, clock=Clock())
    shedder.admit("app")
    shedder.admit("app")
    with pytest.raises(BankError):
        shedder.admit("app")


def test_the_limit_shrinks_on_upstream_refusals_at_most_once_per_interval_and_grows_back() -> None:
    clock = Clock()
    shedder = Shedder(initial=100, minimum=8, decrease_every=0.1, clock=clock)
    for _ in range(50):  # a burst of refusals within one interval: one decrease
        shedder.admit("network")
        shedder.done("network", 429)
    assert shedder.limit == pytest.approx(90)
    for _ in range(40):
        clock.now += 0.11
        shedder.admit("network")
        shedder.done("network", 429)
    assert shedder.limit == 8  # never below the minimum
    for _ in range(800):
        shedder.admit("network")
        shedder.done("network", 200)
    assert 8 < shedder.limit < 100  # timely answers grow it back, about one per limit's worth


def test_a_failed_upstream_call_gives_its_place_back_without_moving_the_limit() -> None:
    shedder = Shedder(initial=10, clock=Clock())
    shedder.admit("network")
    shedder.done("network", 502)
    assert shedder.in_flight["network"] == 0 and shedder.limit == 10


def test_retries_stay_within_a_tenth_of_the_calls() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, floor=0.0, most=5.0, clock=clock)
    allowed = 0
    for _ in range(1000):  # every call fails and wants a retry
        budget.called()
        allowed += budget.may_retry()
    assert allowed <= 0.1 * 1000 + 5  # a tenth, plus what the bucket held at the start


def test_a_quiet_client_may_still_retry_at_the_floor_rate() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, floor=2.0, most=5.0, clock=clock)
    while budget.may_retry():
        pass
    assert not budget.may_retry()
    clock.now += 1.0
    assert budget.may_retry() and budget.may_retry() and not budget.may_retry()
