"""Token buckets on a fake clock: rate, burst, Retry-After, and bounded memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.limits import RateLimiter, TokenBuckets, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)
    assert [buckets.take("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("u") == 0.5  # one token takes half a second at 2/s
    clock.now += 0.25
    assert buckets.take("u") == 0.25
    clock.now += 0.25
    assert buckets.take("u") == 0.0
    assert buckets.take("other") == 0.0  # buckets are per key
    clock.now += 100
    assert [buckets.take("u") for _ in range(4)][-1] > 0  # refills to the burst, never beyond


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(0.001) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"


def test_idle_buckets_are_forgotten_and_memory_is_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=2, max_keys=100, clock=clock)
    for i in range(50):
        buckets.take(f"ip:{i}")
    assert len(buckets) == 50
    clock.now += 2.0  # burst / rate: every bucket is full again, indistinguishable from a new one
    buckets.take("newcomer")
    assert len(buckets) == 1
    for i in range(1000):
        buckets.take(f"flood:{i}")
    assert len(buckets) == 100  # never more than max_keys


def test_an_active_bucket_survives_eviction() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=2, max_keys=1000, clock=clock)
    buckets.take("busy")
    buckets.take("busy")
    assert buckets.take("busy") > 0
    clock.now += 0.5
    for i in range(10):
        buckets.take(f"ip:{i}")
    assert buckets.take("busy") > 0  # still limited: not evicted while it was not yet full


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=200),
    keys=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float], keys: list[int]
) -> None:
    """For one key, with other keys coming and going (and idle ones being evicted), the admitted
    requests never exceed burst + rate * elapsed: eviction only ever forgets a full bucket."""
    clock = Clock()
    buckets = TokenBuckets(rate=rate, burst=burst, max_keys=10, clock=clock)
    start = clock.now
    admitted = 0
    for gap, other in zip(gaps, keys * (len(gaps) // len(keys) + 1), strict=False):
        clock.now += gap
        buckets.take(f"other:{other}")
        if buckets.take("me") == 0.0:
            admitted += 1
        assert admitted <= burst + rate * (clock.now - start) + 1e-6


def test_unlimited_class_and_sizes() -> None:
    limiter = RateLimiter({"tight": (1, 1)}, clock=Clock())
    assert limiter.check("none", "x") == 0.0
    assert limiter.check("tight", "x") == 0.0
    assert limiter.check("tight", "x") == 1.0
    assert limiter.sizes() == {"tight": 1}
