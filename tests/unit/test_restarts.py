"""The supervisor's restart policy for crashed services (pure, on a fake clock)."""

from __future__ import annotations

from bank.supervisor import Restarts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_crash_restarts_at_once_then_pauses_double_while_it_keeps_crashing() -> None:
    clock = Clock()
    restarts = Restarts(clock)
    restarts.started("cards")
    clock.now += 120  # up for two minutes, then crashes
    assert restarts.due("cards")
    restarts.started("cards")
    pauses = []
    for _ in range(8):  # crashes again at once, every time
        clock.now += 0.5
        waited = 0.0
        while not restarts.due("cards"):
            clock.now += 0.25
            waited += 0.25
        pauses.append(waited)
        restarts.started("cards")
    assert pauses[:3] == [1.0, 2.0, 4.0]
    assert max(pauses) == Restarts.MAX_PAUSE


def test_a_service_that_stayed_up_a_minute_starts_afresh() -> None:
    clock = Clock()
    restarts = Restarts(clock)
    restarts.started("accounts")
    clock.now += 1
    assert not restarts.due("accounts")  # crashed within a minute of starting: pause
    clock.now += 1
    assert restarts.due("accounts")
    restarts.started("accounts")
    clock.now += Restarts.STABLE_SECONDS
    assert restarts.due("accounts")  # stable again: at once
