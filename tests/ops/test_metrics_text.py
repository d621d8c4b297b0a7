"""The ops page's reading of Prometheus text: families, labels, histogram quantiles."""

from __future__ import annotations

import math

from services.gateway.ops import metrics_text as mt

TEXT = """# HELP card_authorisations_total Authorisation answers
# TYPE card_authorisations_total counter
card_authorisations_total{response_code="00"} 90.0
card_authorisations_total{response_code="51"} 10.0
card_authorisations_created{response_code="00"} 1.7e9
http_request_duration_seconds_bucket{method="POST",route="/network/authorisations",le="0.01"} 50.0
http_request_duration_seconds_bucket{method="POST",route="/network/authorisations",le="0.1"} 99.0
http_request_duration_seconds_bucket{method="POST",route="/network/authorisations",le="+Inf"} 100.0
http_request_duration_seconds_bucket{method="GET",route="/cards",service="cards",le="+Inf"} 7.0
consumer_lag{consumer="transactions.feed",service="transactions",topic="cards.authorisations"} 3.0
other_metric 5
weird_total{note="a \\"quoted\\" value"} 1
"""


def test_only_the_families_asked_for_are_read() -> None:
    samples = mt.parse(TEXT, ("card_authorisations_total", "consumer_lag", "weird_total"))
    assert mt.by_label(samples, "card_authorisations_total", "response_code") == {"00": 90.0, "51": 10.0}
    assert mt.total(samples, "consumer_lag", consumer="transactions.feed") == 3.0
    assert not any(s.name == "other_metric" or s.name.endswith("_created") for s in samples)
    assert [s.label("note") for s in samples if s.name == "weird_total"] == ['a "quoted" value']


def test_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    samples = mt.parse(TEXT, ("http_request_duration_seconds_bucket",))
    cumulative = mt.buckets(samples, "http_request_duration_seconds", route="/network/authorisations")
    assert cumulative == {0.01: 50.0, 0.1: 99.0, math.inf: 100.0}
    assert mt.quantile(0.5, cumulative) == 0.01
    p99 = mt.quantile(0.99, cumulative)
    assert p99 is not None and math.isclose(p99, 0.1)
    assert mt.quantile(0.5, {}) is None
    assert mt.quantile(0.5, {math.inf: 0.0}) is None


def test_bucket_deltas_survive_a_restarted_process() -> None:
    old = {0.01: 10.0, math.inf: 20.0}
    assert mt.delta({0.01: 15.0, math.inf: 30.0}, old) == {0.01: 5.0, math.inf: 10.0}
    assert mt.delta({0.01: 1.0, math.inf: 2.0}, old) == {0.01: 1.0, math.inf: 2.0}  # counters reset
