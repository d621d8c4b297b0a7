"""Admission by priority past capacity: refuse at the front what cannot be done in time. Pure: the
clock is a parameter.

Card-network authorisations in flight through the gateway are held under a limit that adapts as
TCP's congestion window does (additive increase, multiplicative decrease): a refusal from cards (its
queue stands: a 429) shrinks the limit by a tenth, at most once per `decrease_every`; every other
answer grows it by about one per limit's worth of answers. So the limit settles where cards' queue
just stops standing, and past it an authorisation is refused here, at the cost of reading its
headers, instead of crossing to cards to be refused there (decision 0036). Latency alone does not
move it: on a shared host latency also rises for reasons no admission can fix, and cutting the
limit then only refuses payments.

A refusal is answered after `refusal_pause` (50 ms), holding nothing upstream: a client that sends
again as soon as it is refused (a closed loop that ignores Retry-After) can then cost the gateway at
most one refusal per pause per connection, instead of a storm of instant refusals that starves
the requests admitted.

App traffic is refused first: while authorisations are being refused (in the last `app_quiet`
seconds) or app requests in flight reach `app_limit`, an app request gets a 503. Critical messages
(reversals, advices, clearing: they release or settle money) are never refused here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from shared.errors import BankError

SHED = Counter(
    "gateway_shed_total",
    "Requests the gateway refused past capacity, by priority and reason "
    "(network/limit: authorisations over the adaptive limit; app/network_busy, app/limit)",
    ["priority", "reason"],
)
LIMIT = Gauge("gateway_network_limit", "The adaptive limit of card-network authorisations in flight")
IN_FLIGHT = Gauge("gateway_in_flight", "Requests in flight through the gateway, by priority", ["priority"])


class Shedder:
    def __init__(
        self,
        *,
        initial: float = 256,
        minimum: float = 32,
        maximum: float = 4096,
        app_limit: int = 256,
        refusal_pause: float = 0.05,
        decrease_every: float = 0.1,
        app_quiet: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = initial
        self.minimum, self.maximum = minimum, maximum
        self.app_limit = app_limit
        self.refusal_pause = refusal_pause
        self.decrease_every = decrease_every
        self.app_quiet = app_quiet
        self._clock = clock
        self.in_flight = {"critical": 0, "network": 0, "app": 0}
        self._last_decrease = -1e9
        self._last_network_shed = -1e9
        LIMIT.set(initial)

    def admit(self, priority: str) -> None:
        """Take a place for a request of this priority, or refuse it with a typed error."""
        if priority == "network" and self.in_flight["network"] >= self.limit:
            self._last_network_shed = self._clock()
            raise self._refuse(priority, "limit")
        if priority == "app":
            if self._clock() - self._last_network_shed < self.app_quiet:
                raise self._refuse(priority, "network_busy")
            if self.in_flight["app"] >= self.app_limit:
                raise self._refuse(priority, "limit")
        self.in_flight[priority] += 1
        IN_FLIGHT.labels(priority).set(self.in_flight[priority])

    def done(self, priority: str, status: int) -> None:
        """Give the place back; an authorisation's answer adjusts the limit."""
        self.in_flight[priority] -= 1
        IN_FLIGHT.labels(priority).set(self.in_flight[priority])
        if priority != "network":
            return
        if status == 429:  # cards refused it: its queue stands
            now = self._clock()
            self._last_network_shed = now
            if now - self._last_decrease >= self.decrease_every:
                self._last_decrease = now
                self.limit = max(self.minimum, self.limit * 0.9)
                LIMIT.set(self.limit)
        elif status < 500:
            self.limit = min(self.maximum, self.limit + 1 / self.limit)
            LIMIT.set(self.limit)

    @staticmethod
    def _refuse(priority: str, reason: str) -> BankError:
        SHED.labels(priority, reason).inc()
        if priority == "network":  # as cards answers when its own queue stands: send it again
            return BankError(
                "rate_limited.overloaded",
                "too many authorisations at once: not decided, send it again",
                headers={"Retry-After": "1"},
            )
        return BankError(
            "service_unavailable.overloaded",
            "the bank is busy serving card payments: try again shortly",
            headers={"Retry-After": "1"},
        )
