"""Token-bucket rate limits, in process, with bounded memory. Pure: the clock is a parameter.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; a
request takes one token or is refused with the time until one is available.
A bucket left alone for `burst / rate` seconds is full again, exactly like a
bucket never seen, so forgetting it changes no decision: idle buckets are
evicted as new keys arrive, and at most `max_keys` are kept per class (beyond
that the least recently used is forgotten early, which can only be lenient).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from services.gateway.routes import UNLIMITED

Clock = Callable[[], float]


class TokenBuckets:
    """The buckets of one rate-limit class, one per key (a user id or a client IP)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000, clock: Clock = time.monotonic):
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate > 0, burst >= 1 and max_keys >= 1 are required")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.idle_seconds = burst / rate
        self._clock = clock
        # key -> [tokens, time of last update]; ordered from least to most recently used.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 if allowed, else the seconds until a token is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._evict(now)
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            key, (_, stamp) = next(iter(buckets.items()))
            if len(buckets) < self.max_keys and now - stamp < self.idle_seconds:
                return
            del buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimiter:
    """Every rate-limit class of the route table. `limits` maps class -> (rate per second, burst)."""

    def __init__(
        self,
        limits: Mapping[str, tuple[float, int]],
        *,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.classes = {
            name: TokenBuckets(rate, burst, max_keys=max_keys, clock=clock)
            for name, (rate, burst) in limits.items()
        }

    def check(self, limit_class: str, key: str) -> float:
        """0.0 if allowed, else the seconds to wait. The class "none" is unlimited."""
        if limit_class == UNLIMITED:
            return 0.0
        return self.classes[limit_class].take(key)

    def sizes(self) -> dict[str, int]:
        return {name: len(buckets) for name, buckets in self.classes.items()}


def retry_after(wait_seconds: float) -> str:
    """The Retry-After header: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_seconds)))
