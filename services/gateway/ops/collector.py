"""The figures of the ops page.

Health, rates, latencies, backlogs, lag and sheds: every service's /readyz and /metrics, scraped by
the gateway when someone looks (the page polls), at most once per `min_interval` seconds however many
people look; the last few minutes of scrapes are kept to draw rates, windowed latency percentiles and
the sheds of the last minutes.

Sheds (decision 0036: requests refused past capacity, nothing decided or recorded) exist only as
counters, the gateway's `gateway_shed_total{priority,reason}` and cards'
`card_authorisations_shed_total{reason}`: no row is written for a refusal, so there is nothing in the
database to count. The page shows, per reason, the increase over the scrapes of the last
`SHED_WINDOW` seconds (a counter that went backwards, a restarted process, counts from zero, as
Prometheus' `increase()` does) beside each process's counter since it started, labelled as such.

Totals and money at risk: from the bank's database (ops/auditor.py), never from a process's
counters, which start again from zero when the process does (decision 0038).
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
from services.gateway.ops.auditor import Auditor
from services.gateway.ops.health import ServiceHealth
from shared.errors import BankError

SCRAPE_FAILURES = Counter(
    "gateway_ops_scrape_failures_total", "Failed /metrics scrapes of a service by the ops page", ["service"]
)
FAMILIES = (
    "card_authorisations_total",
    "http_request_duration_seconds_bucket",
    "outbox_backlog",
    "consumer_lag",
    "gateway_shed_total",
    "card_authorisations_shed_total",
    "process_start_time_seconds",  # a process that started again counts its sheds from zero
)
# Where sheds are counted: the process, its counter, and the priority of what it refuses (cards refuses
# only card-network authorisations, on either wire).
SHEDS = (("gateway", "gateway_shed_total"), ("cards", "card_authorisations_shed_total"))
SHED_WINDOW = 300.0  # seconds of scrapes the recent sheds are counted over
APPROVED = "00"
BUSINESS = (  # the database totals shown under "Business totals"
    "authorised_minor", "settled_minor", "refunded_minor", "topups", "holds_outstanding", "cards_by_status",
    "accounts_below_zero", "webhook_endpoints_disabled", "devices_deactivated",
)  # fmt: skip
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
        auditor: Auditor | None = None,
        min_interval: float = 1.0,
        keep_seconds: float = 600.0,
    ) -> None:
        self.health = health
        self.auditor = auditor
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

    async def summary(self) -> dict[str, Any]:
        now, totals, risk = await asyncio.gather(self.scrape(), self._totals(), self._risk())
        history = list(self.history)
        samples = now.all()
        services: dict[str, Any] = {"gateway": {"ok": True, "checks": {}}}
        services.update(now.health)
        for name in services:
            services[name]["metrics"] = name in now.samples
        error = totals.get("error")
        auths = totals.get("authorisations") or {
            "total": None, "approved": None, "approval_rate": None, "by_response_code": {}, "voided": None,
        }  # fmt: skip
        body: dict[str, Any] = {
            "time": now.at,
            "services": services,
            # Totals: committed rows, as of totals["time"] (refreshed at most every few seconds).
            "totals_time": totals.get("time"),
            "totals_error": error,
            "authorisations": {**auths, "series": _auth_series(history)},
            "latency": {name: _latency(history, name, *route) for name, route in AUTH_ROUTE.items()},
            "declines": totals.get("declines", []),
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
            "sheds": sheds(history),
            "webhooks": totals.get("webhooks") or _unknown(),
            "pushes": totals.get("pushes") or _unknown(),
            "business": {key: totals.get(key) for key in BUSINESS},
            "risk": risk,
        }
        if self.gateway_state is not None:
            body["gateway"] = self.gateway_state()
        return body

    async def _totals(self) -> dict[str, Any]:
        if self.auditor is None:
            return {"error": "no database configured for the ops page"}
        return await self.auditor.totals()

    async def _risk(self) -> dict[str, Any]:
        if self.auditor is None:
            return {"ok": False, "error": "no database configured for the ops page", "checks": []}
        return (await self.auditor.risk()).to_dict()


def _unknown() -> dict[str, Any]:
    return {"total": None, "ok": None, "rate": None, "by_outcome": {}}


def _gateway_own(sample: mt.Sample) -> bool:
    """In the gateway's registry, only the gateway's own series (tests may host services in-process)."""
    service = sample.label("service")
    return not service or service == "gateway"


ShedKey = tuple[str, str, str]  # (where, priority, reason)


def _shed_counters(scrape: Scrape, where: str, family: str) -> tuple[float, dict[ShedKey, float]] | None:
    """One process's start time and shed counters in one scrape; None when it was not scraped."""
    if where not in scrape.samples:
        return None
    started, out = 0.0, dict[ShedKey, float]()
    for s in scrape.samples[where]:
        if s.name == family:
            key = (where, s.label("priority") or "network", s.label("reason") or "unknown")
            out[key] = out.get(key, 0.0) + s.value
        elif s.name == "process_start_time_seconds":
            started = s.value
    return started, out


def sheds(history: Sequence[Scrape], window: float = SHED_WINDOW) -> dict[str, Any]:
    """Requests refused past capacity, by where, priority and reason: `recent`, the increase over the
    scrapes of the last `window` seconds, and `since_start`, each process's counter now (None when the
    process is not answering). A process that started again between two scrapes (another
    `process_start_time_seconds`, or a counter that went backwards) counts from zero, and so does a
    series that first appears."""
    latest = history[-1] if history else None
    rows: dict[ShedKey, dict[str, Any]] = {}
    span = 0.0
    if latest is not None:
        recent = [s for s in history if latest.at - s.at <= window]
        span = latest.at - recent[0].at
        for where, family in SHEDS:
            previous: tuple[float, dict[ShedKey, float]] | None = None
            for scrape in recent:
                read = _shed_counters(scrape, where, family)
                if read is None:
                    continue  # not answering then: compare the next scrape with the last one seen
                started, counters = read
                restarted = previous is not None and previous[0] != started
                for key, value in counters.items():
                    row = rows.setdefault(key, {"recent": 0.0, "since_start": None})
                    if previous is not None:
                        before = 0.0 if restarted else previous[1].get(key, 0.0)
                        row["recent"] += value - before if value >= before else value
                previous = read
            for key, value in (_shed_counters(latest, where, family) or (0.0, {}))[1].items():
                rows[key]["since_start"] = int(value)
    listed = [
        {"where": w, "priority": p, "reason": r, "recent": int(v["recent"]), "since_start": v["since_start"]}
        for (w, p, r), v in sorted(rows.items())
    ]
    return {
        "window_s": round(span, 1),
        "recent_total": sum(r["recent"] for r in listed),
        "rows": listed,
        "scraped": {where: latest is not None and where in latest.samples for where, _ in SHEDS},
    }


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
