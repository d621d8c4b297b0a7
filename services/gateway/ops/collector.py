"""The figures of the ops page: every service's /readyz and /metrics, scraped by the gateway.

Scrapes happen when someone looks (the page polls), at most once per `min_interval` seconds however
many people look, and the last few minutes of scrapes are kept to draw rates and windowed latency
percentiles. Nothing runs while nobody looks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, Counter, generate_latest

from services.gateway.ops import metrics_text as mt
from services.gateway.ops.health import ServiceHealth
from shared.errors import BankError
from shared.observability import PUSH_OK_OUTCOMES, PUSH_SENDS_METRIC, RECENT_DEAD_LETTERS, WEBHOOK_OK_OUTCOMES

SCRAPE_FAILURES = Counter(
    "gateway_ops_scrape_failures_total", "Failed /metrics scrapes of a service by the ops page", ["service"]
)
FAMILIES = (
    "card_authorisations_total",
    "card_authorisation_decisions_total",
    "card_authorised_amount_minor_total",
    "card_settled_amount_minor_total",
    "cards{",
    "account_topups_total",
    "account_topup_amount_minor_total",
    "account_holds_outstanding",
    "ledger_negative_balance_postings_total",
    "http_request_duration_seconds_bucket",
    "outbox_backlog",
    "consumer_lag",
    "dead_letters_total",
    "events_consumed_total",
    "webhook_deliveries_total",
    "webhook_endpoints_disabled_total",
    PUSH_SENDS_METRIC,
    "push_devices_deactivated_total",
    "transactions_feed_lag_seconds_bucket",
)
APPROVED = "00"
AUTH_ROUTE = {"cards": ("POST", "/network/authorisations"), "gateway": ("POST", "/network")}
LATENCY_WINDOW = 30.0  # seconds of scrapes the percentiles are computed over


@dataclass(slots=True)
class Scrape:
    at: float  # time.time()
    health: dict[str, dict[str, Any]]
    samples: dict[str, list[mt.Sample]] = field(default_factory=dict)  # per service

    def all(self) -> list[mt.Sample]:
        return [s for samples in self.samples.values() for s in samples]


class Collector:
    def __init__(
        self,
        health: ServiceHealth,
        internal_token: str,
        gateway_state: Callable[[], dict[str, Any]] | None = None,
        *,
        min_interval: float = 1.0,
        keep_seconds: float = 600.0,
    ) -> None:
        self.health = health
        self.internal_token = internal_token
        self.gateway_state = gateway_state
        self.min_interval = min_interval
        self.history: deque[Scrape] = deque(maxlen=max(int(keep_seconds / max(min_interval, 0.1)), 10))
        self._lock = asyncio.Lock()

    async def scrape(self) -> Scrape:
        async with self._lock:
            if self.history and time.time() - self.history[-1].at < self.min_interval:
                return self.history[-1]
            names = list(self.health.clients)
            results = await asyncio.gather(*(self._one(n) for n in names))
            scrape = Scrape(time.time(), {n: r[0] for n, r in zip(names, results, strict=True)})
            for name, (_, samples) in zip(names, results, strict=True):
                if samples is not None:
                    scrape.samples[name] = samples
            own = generate_latest(REGISTRY).decode()
            scrape.samples["gateway"] = [s for s in mt.parse(own, FAMILIES) if _gateway_own(s)]
            self.history.append(scrape)
            return scrape

    async def _one(self, name: str) -> tuple[dict[str, Any], list[mt.Sample] | None]:
        health, metrics = await asyncio.gather(self.health.one(name), self._metrics(name))
        return health, metrics

    async def _metrics(self, name: str) -> list[mt.Sample] | None:
        try:
            resp = await self.health.clients[name].get("/metrics")
        except BankError:
            SCRAPE_FAILURES.labels(name).inc()
            return None
        if resp.status_code != 200:
            SCRAPE_FAILURES.labels(name).inc()
            return None
        return mt.parse(resp.text, FAMILIES)

    async def dead_letters(self, services: Sequence[str]) -> list[dict[str, Any]]:
        """The recent dead letters of `services` (those whose count is not zero), newest first."""
        found: list[dict[str, Any]] = list(RECENT_DEAD_LETTERS)  # the gateway consumes nothing, but tests may

        async def one(name: str) -> list[dict[str, Any]]:
            try:
                resp = await self.health.clients[name].get(
                    "/internal/dead-letters", headers={"x-internal-token": self.internal_token}
                )
            except BankError:
                return []
            body = resp.json() if resp.status_code == 200 else {}
            return list(body.get("dead_letters", []))

        for rows in await asyncio.gather(*(one(n) for n in services if n in self.health.clients)):
            found.extend(rows)
        found.sort(key=lambda d: str(d.get("time", "")), reverse=True)
        return found[:30]

    async def summary(self) -> dict[str, Any]:
        now = await self.scrape()
        history = list(self.history)
        samples = now.all()
        services: dict[str, Any] = {"gateway": {"ok": True, "checks": {}}}
        services.update(now.health)
        for name in services:
            services[name]["metrics"] = name in now.samples
        codes = mt.by_label(now.samples.get("cards", []), "card_authorisations_total", "response_code")
        total = sum(codes.values())
        approved = codes.get(APPROVED, 0.0)
        declines = mt.by_label(samples, "card_authorisation_decisions_total", "reason", decision="declined")
        dead = {
            f"{s.label('service')}/{s.label('consumer')}": s.value
            for s in samples
            if s.name == "dead_letters_total" and s.value > 0
        }
        body: dict[str, Any] = {
            "time": now.at,
            "services": services,
            "authorisations": {
                "total": int(total),
                "approved": int(approved),
                "approval_rate": (approved / total) if total else None,
                "by_response_code": {k: int(v) for k, v in sorted(codes.items())},
                "series": _auth_series(history),
            },
            "latency": {name: _latency(history, name, *route) for name, route in AUTH_ROUTE.items()},
            "declines": {k or "OTHER": int(v) for k, v in sorted(declines.items(), key=lambda kv: -kv[1])},
            "outbox": {s.label("service"): int(s.value) for s in samples if s.name == "outbox_backlog"},
            "consumers": sorted(
                (
                    {
                        "service": s.label("service"),
                        "consumer": s.label("consumer"),
                        "topic": s.label("topic"),
                        "lag": int(s.value),
                    }
                    for s in samples
                    if s.name == "consumer_lag"
                ),
                key=lambda c: (c["consumer"], c["topic"]),
            ),
            "webhooks": _success(samples, "webhook_deliveries_total", WEBHOOK_OK_OUTCOMES),
            "pushes": _success(samples, PUSH_SENDS_METRIC, PUSH_OK_OUTCOMES),
            "dead_letters": {
                "counts": dead,
                "recent": await self.dead_letters(sorted({k.split("/")[0] for k in dead})) if dead else [],
            },
            "business": _business(samples),
        }
        if self.gateway_state is not None:
            body["gateway"] = self.gateway_state()
        return body


def _gateway_own(sample: mt.Sample) -> bool:
    """In the gateway's registry, only the gateway's own series (tests may host services in-process)."""
    service = sample.label("service")
    return not service or service == "gateway"


def _auth_totals(scrape: Scrape) -> tuple[float, float] | None:
    if "cards" not in scrape.samples:
        return None
    codes = mt.by_label(scrape.samples["cards"], "card_authorisations_total", "response_code")
    return sum(codes.values()), codes.get(APPROVED, 0.0)


def _auth_series(history: Sequence[Scrape]) -> list[dict[str, Any]]:
    """Authorisations per second and approval rate between consecutive scrapes."""
    out: list[dict[str, Any]] = []
    prev: tuple[float, tuple[float, float]] | None = None
    for scrape in history:
        totals = _auth_totals(scrape)
        if totals is None:
            prev = None
            continue
        if prev is not None:
            (_, (n0, a0)), dt = prev, scrape.at - prev[0]
            n, a = totals
            if n < n0:  # cards restarted: its counters began again
                n0, a0 = 0.0, 0.0
            if dt > 0:
                dn = n - n0
                out.append(
                    {"t": scrape.at, "per_second": dn / dt, "approval_rate": (a - a0) / dn if dn else None}
                )
        prev = (scrape.at, totals)
    return out[-150:]


def _latency(history: Sequence[Scrape], service: str, method: str, route: str) -> dict[str, Any]:
    """p50/p99 (ms) of the authorisation route over the last LATENCY_WINDOW seconds of scrapes (since
    start-up when nothing happened in the window)."""
    latest = history[-1] if history else None
    if latest is None or service not in latest.samples:
        return {"p50_ms": None, "p99_ms": None, "count": 0, "window_s": None}
    match = {"method": method, "route": route}
    new = mt.buckets(latest.samples[service], "http_request_duration_seconds", **match)
    window: dict[float, float] = new
    span = None
    for old in history:
        if service in old.samples and latest.at - old.at <= LATENCY_WINDOW and old is not latest:
            diff = mt.delta(new, mt.buckets(old.samples[service], "http_request_duration_seconds", **match))
            if diff and max(diff.values()) > 0:
                window, span = diff, latest.at - old.at
            break
    p50, p99 = mt.quantile(0.5, window), mt.quantile(0.99, window)
    return {
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "count": int(max(window.values(), default=0)),
        "window_s": None if span is None else round(span, 1),
    }


def _success(samples: Sequence[mt.Sample], name: str, ok: frozenset[str]) -> dict[str, Any]:
    outcomes = mt.by_label(samples, name, "outcome")
    total = sum(outcomes.values())
    good = sum(v for k, v in outcomes.items() if k in ok)
    return {
        "total": int(total),
        "ok": int(good),
        "rate": (good / total) if total else None,
        "by_outcome": {k: int(v) for k, v in sorted(outcomes.items())},
    }


def _business(samples: Sequence[mt.Sample]) -> dict[str, Any]:
    return {
        "authorised_minor": mt.by_label(samples, "card_authorised_amount_minor_total", "currency"),
        "settled_minor": mt.by_label(samples, "card_settled_amount_minor_total", "currency"),
        "topups": mt.by_label(samples, "account_topups_total", "currency"),
        "topup_minor": mt.by_label(samples, "account_topup_amount_minor_total", "currency"),
        "cards_by_status": mt.by_label(samples, "cards", "status"),
        "holds_outstanding": mt.by_label(samples, "account_holds_outstanding", "currency"),
        "negative_balance_postings": mt.total(samples, "ledger_negative_balance_postings_total"),
        "webhook_endpoints_disabled": mt.total(samples, "webhook_endpoints_disabled_total"),
        "devices_deactivated": mt.total(samples, "push_devices_deactivated_total"),
    }
