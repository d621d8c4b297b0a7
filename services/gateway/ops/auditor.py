"""The ops page's figures that must survive restarts, read from the bank's database (decision 0038).

Business totals (authorisations by answer, declines by reason, amounts authorised and settled,
top-ups, holds outstanding, webhooks and pushes by outcome) and the money-at-risk panel
(ops/invariants.py) come from the rows the services committed, never from a process's counters,
which start again from zero with the process.

One connection per gateway process, read-only (`default_transaction_read_only`, a statement
timeout), opened when first needed and again after a failure; `GATEWAY_OPS_DATABASE_URL` may name a
role that can only read. The gateway's readiness never depends on it: without the database the
page says so where these figures would be.

* Money at risk: one statement per refresh (`GATEWAY_OPS_REFRESH_SECONDS`, 10). The gateway
  process holding a PostgreSQL advisory lock runs it on a timer, whoever looks, and exports the
  result as gauges (`bank_invariant_violations{check}` and friends) from memory: a scrape never
  queries, and with several gateway replicas only the lock holder queries and exports. A replica
  without the lock reads it only when its page is looked at, at most once per refresh.
* Totals: one statement, only while someone looks, at most once per refresh.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.gateway.ops.invariants import RiskSnapshot, read_snapshot
from shared.config import to_libpq
from shared.priority import server_is_local, yield_cpu

log = logging.getLogger("gateway.ops.auditor")
T = TypeVar("T")

LOCK_KEY = 0x0B_A0_C5  # the advisory lock whose holder refreshes and exports the money-at-risk gauges
OFF = "off"


class OpsSettings(BaseSettings):
    """`GATEWAY_OPS_*` variables of the database figures (the credential and scrape interval are
    GatewaySettings')."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_OPS_", extra="ignore")

    # The database the figures are read from: empty for BANK_DATABASE_URL, "off" for none.
    database_url: str = ""
    # Money at risk and the totals are at most this old (seconds); one statement each per refresh.
    refresh_seconds: float = Field(default=10.0, gt=0)
    # A hold with no approved authorisation, or an approval not in the feed, is at risk once older
    # than this (younger: being resolved; accounts resolves provisional holds within ~15 s).
    grace_seconds: float = Field(default=60.0, ge=0)
    # A hold past its expiry is at risk once overdue by this (accounts' expiry job runs every 60 s).
    expiry_grace_seconds: float = Field(default=120.0, ge=0)
    # The feed check looks at the authorisations of the last this many hours (bank check: all of them).
    feed_window_hours: float = Field(default=24.0, gt=0)
    # Items listed per check (ids and ages); the counts are always complete.
    items: int = Field(default=100, ge=1, le=1000)
    statement_timeout_ms: int = Field(default=5000, ge=100)


# Business totals, one statement. Every figure is a count or sum over committed rows.
TOTALS_SQL = """
SELECT json_build_object(
 'by_response_code', (SELECT coalesce(json_object_agg(response_code, n), '{}') FROM (
     SELECT response_code, count(*) AS n FROM cards.authorisations WHERE kind <> 'voided' GROUP BY 1) x),
 'voided', (SELECT count(*) FROM cards.authorisations WHERE kind = 'voided'),
 'declines', (SELECT coalesce(json_agg(x), '[]') FROM (
     SELECT coalesce(decline_reason, 'OTHER') AS reason, coalesce(decline_detail, '') AS detail,
            response_code, count(*) AS n
     FROM cards.authorisations WHERE status = 'declined' AND kind <> 'voided'
     GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2) x),
 'authorised_minor', (SELECT coalesce(json_object_agg(currency, s), '{}') FROM (
     SELECT currency, sum(amount) AS s FROM cards.authorisations
     WHERE response_code = '00' AND kind <> 'voided' GROUP BY 1) x),
 'settled_minor', (SELECT coalesce(json_object_agg(currency, s), '{}') FROM (
     SELECT currency, sum(amount) AS s FROM cards.presentments
     WHERE status = 'settled' AND left(processing_code, 2) <> '20' GROUP BY 1) x),
 'refunded_minor', (SELECT coalesce(json_object_agg(currency, s), '{}') FROM (
     SELECT currency, sum(amount) AS s FROM cards.presentments
     WHERE status = 'settled' AND left(processing_code, 2) = '20' GROUP BY 1) x),
 'topups', (
     SELECT coalesce(json_object_agg(currency, json_build_object('count', n, 'minor', s)), '{}') FROM (
     SELECT p.currency, count(*) AS n, sum(p.amount) AS s FROM accounts.journal_entries e
     JOIN accounts.postings p ON p.entry_id = e.id AND p.account_id = e.account_id
     WHERE e.kind = 'topup' GROUP BY 1) x),
 'holds_outstanding', (
     SELECT coalesce(json_object_agg(currency, json_build_object('count', n, 'minor', s)), '{}')
     FROM (SELECT currency, count(*) AS n, sum(amount) AS s FROM accounts.holds WHERE status = 'active'
           GROUP BY 1) x),
 'cards_by_status', (SELECT coalesce(json_object_agg(status, n), '{}') FROM (
     SELECT status, count(*) AS n FROM cards.cards GROUP BY 1) x),
 'accounts_below_zero', (SELECT count(*) FROM accounts.accounts WHERE kind = 'customer' AND balance < 0),
 'webhooks', (SELECT coalesce(json_object_agg(status, n), '{}') FROM (
     SELECT status, count(*) AS n FROM webhooks.deliveries GROUP BY 1) x),
 'webhook_endpoints_disabled', (SELECT count(*) FROM webhooks.webhooks WHERE status = 'disabled'),
 'pushes', (SELECT coalesce(json_object_agg(status, n), '{}') FROM (
     SELECT status, count(*) AS n FROM notifications.deliveries GROUP BY 1) x),
 'devices_deactivated', (SELECT count(*) FROM notifications.devices WHERE NOT active)
)
"""
APPROVED = "00"
WEBHOOK_OK = frozenset({"succeeded"})
PUSH_OK = frozenset({"sent"})


class AuditUnavailable(Exception):
    """The database could not be read."""


def _outcomes(by_status: dict[str, int], ok: frozenset[str]) -> dict[str, Any]:
    total = sum(by_status.values())
    good = sum(n for status, n in by_status.items() if status in ok)
    return {"total": total, "ok": good, "rate": good / total if total else None, "by_outcome": by_status}


def shape_totals(raw: dict[str, Any], at: float) -> dict[str, Any]:
    """TOTALS_SQL's document as the ops page shows it."""
    codes = {str(k): int(v) for k, v in raw["by_response_code"].items()}
    total = sum(codes.values())
    approved = codes.get(APPROVED, 0)
    return {
        "time": at,
        "authorisations": {
            "total": total,
            "approved": approved,
            "approval_rate": approved / total if total else None,
            "by_response_code": dict(sorted(codes.items())),
            "voided": int(raw["voided"]),
        },
        "declines": [{**d, "n": int(d["n"])} for d in raw["declines"]],
        "authorised_minor": raw["authorised_minor"],
        "settled_minor": raw["settled_minor"],
        "refunded_minor": raw["refunded_minor"],
        "topups": raw["topups"],
        "holds_outstanding": raw["holds_outstanding"],
        "cards_by_status": raw["cards_by_status"],
        "accounts_below_zero": int(raw["accounts_below_zero"]),
        "webhooks": _outcomes({k: int(v) for k, v in raw["webhooks"].items()}, WEBHOOK_OK),
        "webhook_endpoints_disabled": int(raw["webhook_endpoints_disabled"]),
        "pushes": _outcomes({k: int(v) for k, v in raw["pushes"].items()}, PUSH_OK),
        "devices_deactivated": int(raw["devices_deactivated"]),
    }


async def read_totals(conn: Any) -> dict[str, Any]:
    at = time.time()
    raw = await conn.fetchval(TOTALS_SQL)
    return shape_totals(json.loads(raw) if isinstance(raw, str) else raw, at)


class ExportedRisk(Collector):
    """The last money-at-risk snapshot this process refreshed as the lock holder, as gauges. Nothing
    is queried at scrape time; a snapshot older than `fresh_for` is not exported (its absence is what
    the InvariantsNotChecked alert looks for)."""

    def __init__(self) -> None:
        self.snapshot: RiskSnapshot | None = None
        self.fresh_for = 30.0

    def publish(self, snapshot: RiskSnapshot, fresh_for: float) -> None:
        self.snapshot, self.fresh_for = snapshot, fresh_for

    def describe(self) -> list[Any]:
        return []  # registered without a collect() at registration time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        if snap is None or snap.error is not None or time.time() - snap.at > self.fresh_for:
            return
        violations = GaugeMetricFamily(
            "bank_invariant_violations",
            "Items at risk per money invariant (ops/invariants.py): stray_holds, overdue_holds, "
            "feed_misses, dead_letters, ledger_sums",
            labels=["check"],
        )
        resolving = GaugeMetricFamily(
            "bank_invariant_resolving",
            "Items a job is expected to resolve, not yet at risk (young stray holds, feed items on the way)",
            labels=["check"],
        )
        for c in snap.checks:
            violations.add_metric([c.name], c.at_risk)
            resolving.add_metric([c.name], c.resolving)
        yield violations
        yield resolving
        dead = GaugeMetricFamily(
            "bank_dead_letters_unresolved", "Unresolved dead letters", labels=["service", "consumer"]
        )
        for key, n in snap.check("dead_letters").groups.items():
            service, _, consumer = key.partition("/")
            dead.add_metric([service, consumer], n)
        yield dead
        sums = GaugeMetricFamily(
            "bank_ledger_sum_minor", "All postings summed per currency (must be 0)", labels=["currency"]
        )
        for currency, total in snap.check("ledger_sums").groups.items():
            sums.add_metric([currency], total)
        yield sums
        yield GaugeMetricFamily(
            "bank_invariants_checked_timestamp_seconds",
            "When the money invariants were last read from the database (unix time)",
            value=snap.at,
        )
        yield GaugeMetricFamily(
            "bank_invariants_check_seconds",
            "How long the money invariants' statement took",
            value=snap.took_seconds,
        )


EXPORTED = ExportedRisk()
REGISTRY.register(EXPORTED)


class Auditor:
    """The gateway's read-only window on the bank's database, for /ops."""

    def __init__(self, database_url: str, settings: OpsSettings | None = None) -> None:
        self.settings = settings or OpsSettings()
        self.enabled = self.settings.database_url.strip().lower() != OFF
        self.url = to_libpq(self.settings.database_url or database_url)
        self.leader = False
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._risk: RiskSnapshot | None = None
        self._totals: dict[str, Any] | None = None
        self._failure: tuple[float, str] | None = None
        self._last_warning = -math.inf

    # The connection --------------------------------------------------------------------------

    async def _connection(self) -> Any:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self.leader = False
            self._conn = await asyncpg.connect(
                self.url,
                timeout=3,
                statement_cache_size=0,
                server_settings={
                    "application_name": "bank-gateway-ops",
                    "default_transaction_read_only": "on",
                    "statement_timeout": str(self.settings.statement_timeout_ms),
                    "lock_timeout": "1000",
                },
            )
            if server_is_local(self.url):  # the audit's scans never delay the card path (decision 0047)
                yield_cpu(self._conn.get_server_pid())
        return self._conn

    async def _use(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run `work` on the connection, one at a time; any failure drops the connection (and the
        lock with it) and is reported as AuditUnavailable."""
        if not self.enabled:
            raise AuditUnavailable("the ops database figures are off (GATEWAY_OPS_DATABASE_URL=off)")
        async with self._lock:
            try:
                result = await work(await self._connection())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._drop()
                message = f"cannot read the bank's database: {type(exc).__name__}: {exc}"
                self._failure = (time.time(), message)
                now = time.monotonic()
                if now - self._last_warning > 60:
                    self._last_warning = now
                    log.warning(message)
                raise AuditUnavailable(message) from exc
            self._failure = None
            return result

    async def _drop(self) -> None:
        conn, self._conn, self.leader = self._conn, None, False
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    def _recent_failure(self) -> str | None:
        if self._failure and time.time() - self._failure[0] < self.settings.refresh_seconds:
            return self._failure[1]
        return None

    # Money at risk ---------------------------------------------------------------------------

    def _fresh(self, at: float | None) -> bool:
        return at is not None and time.time() - at < self.settings.refresh_seconds

    async def _read_risk(self, conn: Any) -> RiskSnapshot:
        s = self.settings
        snap = await read_snapshot(
            conn, grace=s.grace_seconds, expiry_grace=s.expiry_grace_seconds, items=s.items,
            feed_hours=s.feed_window_hours,
        )  # fmt: skip
        self._risk = snap
        if self.leader:
            EXPORTED.publish(snap, fresh_for=3 * s.refresh_seconds + 5)
        return snap

    def _error_snapshot(self, message: str) -> RiskSnapshot:
        s = self.settings
        return RiskSnapshot(time.time(), 0.0, s.grace_seconds, s.expiry_grace_seconds, error=message)

    async def risk(self) -> RiskSnapshot:
        """The panel, at most `refresh_seconds` old."""
        if self._risk is not None and self._fresh(self._risk.at):
            return self._risk
        if (failed := self._recent_failure()) is not None:
            return self._error_snapshot(failed)

        async def read(conn: Any) -> RiskSnapshot:
            if self._risk is not None and self._fresh(self._risk.at):  # another caller just read it
                return self._risk
            return await self._read_risk(conn)

        try:
            return await self._use(read)
        except AuditUnavailable as exc:
            return self._error_snapshot(str(exc))

    async def refresh_round(self) -> None:
        """One round of the timer: take the lock if nobody holds it; the holder reads and exports."""

        async def lead(conn: Any) -> None:
            if not self.leader:
                self.leader = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY))
            if self.leader:
                await self._read_risk(conn)

        await self._use(lead)

    async def run(self) -> None:
        """Background job: every `refresh_seconds`, one refresh round."""
        if not self.enabled:
            return
        while True:
            try:
                await self.refresh_round()
            except AuditUnavailable:
                pass  # logged (at most once a minute) by _use; try again next round
            await asyncio.sleep(self.settings.refresh_seconds)

    # Totals ----------------------------------------------------------------------------------

    async def totals(self) -> dict[str, Any]:
        """The business totals, at most `refresh_seconds` old; {"error": …} without the database."""
        if self._totals is not None and self._fresh(self._totals["time"]):
            return self._totals
        if (failed := self._recent_failure()) is not None:
            return {"error": failed, "time": time.time()}

        async def read(conn: Any) -> dict[str, Any]:
            if self._totals is not None and self._fresh(self._totals["time"]):
                return self._totals
            self._totals = await read_totals(conn)
            return self._totals

        try:
            return await self._use(read)
        except AuditUnavailable as exc:
            return {"error": str(exc), "time": time.time()}

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
