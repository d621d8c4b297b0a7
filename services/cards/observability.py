"""Cards' business metrics, and a log line that cannot become a flood."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram

from shared.observability import log_fields

AUTHORISATIONS = Counter(
    "card_authorisations_total", "Authorisation answers (0110) by ISO 8583 response code", ["response_code"]
)
STAGES = ("admission", "lookup", "decision", "accounts", "record")
STAGE_SECONDS = Histogram(
    "card_authorisation_stage_seconds",
    "Where an authorisation's time goes: waiting for its turn, the card lookup (pool, BEGIN, SELECT), "
    "the decision (daily total), the accounts call, writing and committing",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5),
)
_STAGE = {stage: STAGE_SECONDS.labels(stage) for stage in STAGES}
ISSUER_UNAVAILABLE = Counter(
    "card_issuer_unavailable_total", "91 answers by why accounts did not answer in time", ["cause"]
)
SHED = Counter(
    "card_authorisations_shed_total", "Authorisations not answered (429): their turn did not come in time"
)
COMPENSATIONS = Counter(
    "card_compensations_total", "Holds the compensation job finished with, by outcome", ["outcome"]
)


class Throttled:
    """A warning logged at most once per `seconds`, carrying how many occurrences it stands for: an
    overload answered with thousands of 91s must not also pay for thousands of log lines."""

    def __init__(self, logger: logging.Logger, seconds: float = 5.0) -> None:
        self.logger = logger
        self.seconds = seconds
        self._last = -float("inf")
        self._count = 0

    def warning(self, message: str, **fields: Any) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self.logger.warning(message, extra=log_fields(**fields, occurrences=self._count))
            self._last, self._count = now, 0


class Stopwatch:
    """Timing spans of one authorisation: `lap(stage)` records the time since the previous lap."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        _STAGE[stage].observe(now - self._last)
        self._last = now
