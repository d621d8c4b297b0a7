"""Sheds by reason on /ops (issue 24, decision 0036): what the page counts from the services' scraped
shed counters. The counters here are real prometheus_client counters of the same names and labels as the
gateway's and cards', in registries of their own (a process each), read back through the text format
as the ops page scrapes them."""

from __future__ import annotations

import itertools
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from services.gateway.ops import metrics_text as mt
from services.gateway.ops.collector import FAMILIES, Scrape, sheds

STARTS = itertools.count()


class Process:
    """One process's shed counter, as gateway/shedding.py or cards/observability.py defines it."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.restart()

    def restart(self) -> None:
        self.registry = CollectorRegistry()
        started = Gauge("process_start_time_seconds", "start", registry=self.registry)
        started.set(1.7e9 + next(STARTS))  # as prometheus_client's process collector exports it
        if self.where == "gateway":
            self.counter = Counter(
                "gateway_shed_total", "sheds", ["priority", "reason"], registry=self.registry
            )
        else:
            self.counter = Counter(
                "card_authorisations_shed_total", "sheds", ["reason"], registry=self.registry
            )

    def shed(self, n: int, *labels: str) -> None:
        self.counter.labels(*labels).inc(n)

    def samples(self) -> list[mt.Sample]:
        return mt.parse(generate_latest(self.registry).decode(), FAMILIES)


def scrape(at: float, *processes: Process) -> Scrape:
    return Scrape(at, {}, {p.where: p.samples() for p in processes})


def row(result: dict[str, Any], where: str, priority: str, reason: str) -> dict[str, Any]:
    [found] = [
        r for r in result["rows"] if (r["where"], r["priority"], r["reason"]) == (where, priority, reason)
    ]
    return dict(found)


def test_sheds_are_counted_by_where_priority_and_reason_across_restarts_and_gaps() -> None:
    gateway, cards = Process("gateway"), Process("cards")
    history = [scrape(0, gateway, cards)]  # nothing shed yet: no series at all
    gateway.shed(3, "network", "limit")
    cards.shed(2, "overloaded")
    history.append(scrape(10, gateway, cards))  # series that first appear count from zero
    gateway.shed(4, "app", "network_busy")
    history.append(scrape(20, gateway))  # cards not answering: skipped, compared with its next scrape
    cards.shed(5, "overloaded")
    cards.shed(1, "queue_timeout")
    cards.restart()  # killed and started again: its counters begin from zero
    cards.shed(6, "overloaded")
    gateway.shed(1, "network", "limit")
    history.append(scrape(30, gateway, cards))

    result = sheds(history)
    assert result["window_s"] == 30.0
    assert row(result, "gateway", "network", "limit") == {
        "where": "gateway", "priority": "network", "reason": "limit", "recent": 4, "since_start": 4,
    }  # fmt: skip
    assert row(result, "gateway", "app", "network_busy")["recent"] == 4
    # cards: 2 before the restart were seen; 5 more and the queue timeout were lost with the process (as
    # Prometheus' increase() loses them), 6 after it; cards refuses only card-network authorisations.
    assert row(result, "cards", "network", "overloaded") == {
        "where": "cards", "priority": "network", "reason": "overloaded", "recent": 2 + 6, "since_start": 6,
    }  # fmt: skip
    assert not [r for r in result["rows"] if r["reason"] == "queue_timeout"]  # never scraped: lost with it
    assert result["recent_total"] == 4 + 4 + 8
    assert result["scraped"] == {"gateway": True, "cards": True}


def test_only_the_window_counts_as_recent_and_a_silent_process_is_named() -> None:
    gateway, cards = Process("gateway"), Process("cards")
    gateway.shed(10, "network", "limit")
    history = [scrape(0, gateway, cards)]
    gateway.shed(5, "network", "limit")
    history.append(scrape(100, gateway, cards))
    gateway.shed(2, "network", "limit")
    history.append(scrape(400, gateway))  # cards is down now
    result = sheds(history, window=300)
    assert result["window_s"] == 300.0
    assert row(result, "gateway", "network", "limit")["recent"] == 2  # the first 15 are older than 300 s
    assert row(result, "gateway", "network", "limit")["since_start"] == 17
    assert result["scraped"] == {"gateway": True, "cards": False}
    assert sheds([]) == {
        "window_s": 0.0,
        "recent_total": 0,
        "rows": [],
        "scraped": {"gateway": False, "cards": False},
    }
