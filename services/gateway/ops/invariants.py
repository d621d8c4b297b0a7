"""The bank's money invariants as SQL: one definition for `bank check`, the ops page's money-at-risk
panel, `bank check --watch` and the gauges Prometheus alerts on (decision 0038).

These queries read every service's schema: they are the auditor's, not a service's. They run on a
read-only connection (services/gateway/ops/auditor.py, bank/checker.py), never on a service's pool.

Each check is a query whose rows are the items behind it, each with its age, so that a young item
that a job is about to resolve (a provisional hold before its resolution, decision 0031; an
authorisation whose feed item is still on its way) can be told from one at risk:

| check         | rows                                                     | at risk when            |
|---------------|----------------------------------------------------------|-------------------------|
| stray_holds   | active holds no approved authorisation stands behind     | older than the grace    |
| overdue_holds | active holds past their expiry                           | overdue past its grace  |
| feed_misses   | approved spending authorisations without exactly one     | older than the grace    |
|               | feed transaction                                         | (or in the feed twice)  |
| dead_letters  | events a consumer parked and nobody has resolved         | always                  |
| ledger_sums   | all postings of all accounts, summed per currency        | a sum is not zero       |

`snapshot_sql` runs all five as ONE statement (each query once, materialised), returning one row
per check: the count at risk, the count still being resolved, the counts per group, and the oldest
items (ids and ages). Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPENDING_CODES = ("00", "01")  # processing codes that make a feed item (services/transactions/feed.py)
SCHEMAS_WITH_DEAD_LETTERS = ("accounts", "cards", "transactions", "webhooks", "notifications", "gateway")
_SPENDING = ", ".join(f"'{code}'" for code in SPENDING_CODES)

# Active holds that no approved authorisation stands behind. Young ones are normal: accounts places
# a hold before cards records the authorisation, and releases it within ~15 s when none is recorded
# (`unconfirmed`: accounts' resolution job still has it in hand).
STRAY_HOLDS = """
SELECT h.id, h.network_txn_id, h.amount, h.currency, h.account_id,
       extract(epoch FROM now() - h.created)::float8 AS age_seconds,
       EXISTS (SELECT 1 FROM accounts.unconfirmed_holds u WHERE u.network_txn_id = h.network_txn_id)
           AS unconfirmed
FROM accounts.holds h
WHERE h.status = 'active' AND (
    -- A scalar subquery, not NOT EXISTS: PostgreSQL would make that an anti-join that scans every
    -- authorisation; this looks each active hold's up by cards' unique network id. A hold is placed
    -- under its authorisation's id, a partial reversal's re-hold under `<id>:r<remaining>`.
    SELECT a.id FROM cards.authorisations a
    WHERE a.network_transaction_id IN (h.network_txn_id, regexp_replace(h.network_txn_id, ':r[0-9]+$', ''))
      AND a.hold_id = h.network_txn_id AND a.status = 'approved'
    LIMIT 1) IS NULL
"""
# Active holds past their expiry (accounts' expiry job releases them every minute).
OVERDUE_HOLDS = """
SELECT h.id, h.network_txn_id, h.amount, h.currency, h.account_id,
       extract(epoch FROM now() - h.created)::float8 AS age_seconds,
       extract(epoch FROM now() - h.expires_at)::float8 AS overdue_seconds
FROM accounts.holds h WHERE h.status = 'active' AND h.expires_at <= now()
"""
# Approved spending authorisations without exactly one feed transaction (0: not yet, or lost; 2+:
# twice). `feed_misses(since)` looks only at authorisations whose id is at least `since` (ids are
# time-ordered, shared/ids.py, so the primary key finds them): the panel checks the last day
# (`id_floor`) every 10 s; `bank check` checks every one ("").
_FEED_MISSES = f"""
SELECT a.id, a.network_transaction_id AS nid, a.amount, a.currency, a.account_id, f.n,
       extract(epoch FROM now() - a.created)::float8 AS age_seconds
FROM cards.authorisations a
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM transactions.transactions t WHERE t.source_key = 'auth:' || a.id) f
WHERE a.id >= %SINCE% AND a.status <> 'declined' AND left(a.processing_code, 2) IN ({_SPENDING})
  AND f.n <> 1
"""


def feed_misses(since: str = "$4") -> str:
    """FEED_MISSES from `since`: a SQL expression (a parameter, or a quoted literal)."""
    return _FEED_MISSES.replace("%SINCE%", since)


FEED_MISSES = feed_misses("''")  # every authorisation
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def id_floor(prefix: str, unix_seconds: float) -> str:
    """The smallest id `shared.ids.new_id(prefix)` could have made at `unix_seconds`."""
    value, chars = int(unix_seconds * 1000), []
    for _ in range(10):
        value, rem = divmod(value, 32)
        chars.append(_CROCKFORD[rem])
    return f"{prefix}_{''.join(reversed(chars))}" + "0" * 16


# Events a consumer gave up on (after its retries) that nobody has marked resolved.
DEAD_LETTERS = "\nUNION ALL\n".join(
    f"""SELECT '{schema}' AS service, d.consumer, d.id, d.event_id, d.event_type, d.topic, d.attempts,
       left(d.error, 200) AS error, extract(epoch FROM now() - d.created_at)::float8 AS age_seconds
FROM {schema}.dead_letters d WHERE d.resolved_at IS NULL"""
    for schema in SCHEMAS_WITH_DEAD_LETTERS
)
# All postings of all accounts (customers' and the bank's own) per currency: zero, or money was
# created or lost.
LEDGER_TOTALS = "SELECT currency, sum(amount)::bigint AS total FROM accounts.postings GROUP BY currency"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    title: str
    at_risk: str  # what makes an item count as at risk, for people


CHECKS = (
    Check("stray_holds", "Holds active with no approved authorisation", "older than {grace}"),
    Check(
        "overdue_holds", "Holds past their expiry, not released", "past expiry by more than {expiry_grace}"
    ),
    Check("feed_misses", "Approved authorisations missing from the feed", "older than {grace}"),
    Check("dead_letters", "Dead letters, by consumer", "any unresolved"),
    Check("ledger_sums", "Ledger sums to zero, per currency", "a currency's postings do not sum to 0"),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


def snapshot_sql() -> str:
    """One statement, parameters $1 grace seconds (stray holds, feed), $2 expiry grace seconds,
    $3 items listed per check, $4 the first authorisation id the feed check looks at (`id_floor`).
    Rows: (name, at_risk, resolving, total, groups json, items json)."""

    def items(source: str, order: str) -> str:
        return (
            f"(SELECT coalesce(json_agg(i), '[]'::json) FROM "
            f"(SELECT * FROM {source} ORDER BY {order} LIMIT $3) i)"
        )

    return f"""
WITH stray AS MATERIALIZED ({STRAY_HOLDS}),
     overdue AS MATERIALIZED ({OVERDUE_HOLDS}),
     unfed AS MATERIALIZED ({feed_misses("$4")}),
     dead AS MATERIALIZED ({DEAD_LETTERS}),
     ledger AS MATERIALIZED ({LEDGER_TOTALS})
SELECT 'stray_holds' AS name, count(*) FILTER (WHERE age_seconds >= $1) AS at_risk,
       count(*) FILTER (WHERE age_seconds < $1) AS resolving, count(*) AS total, NULL::json AS groups,
       {items("stray", "age_seconds DESC")} AS items
FROM stray
UNION ALL
SELECT 'overdue_holds', count(*) FILTER (WHERE overdue_seconds >= $2),
       count(*) FILTER (WHERE overdue_seconds < $2), count(*), NULL::json,
       {items("overdue", "overdue_seconds DESC")}
FROM overdue
UNION ALL
SELECT 'feed_misses', count(*) FILTER (WHERE age_seconds >= $1 OR n > 1),
       count(*) FILTER (WHERE age_seconds < $1 AND n = 0), count(*), NULL::json,
       {items("unfed", "age_seconds DESC")}
FROM unfed
UNION ALL
SELECT 'dead_letters', count(*), 0, count(*),
       (SELECT json_object_agg(k, n) FROM (SELECT service || '/' || consumer AS k, count(*) AS n
                                           FROM dead GROUP BY 1) g),
       {items("dead", "age_seconds DESC")}
FROM dead
UNION ALL
SELECT 'ledger_sums', count(*) FILTER (WHERE total <> 0), 0, count(*),
       (SELECT json_object_agg(currency, total) FROM ledger),
       {items("ledger", "currency")}
FROM ledger
"""


@dataclass
class CheckResult:
    name: str
    title: str
    rule: str
    at_risk: int
    resolving: int  # young items a job is expected to resolve: not (yet) at risk
    total: int
    groups: dict[str, int]  # dead letters per service/consumer; ledger sums per currency
    items: list[dict[str, Any]]  # the oldest first, each with its ids and age_seconds

    @property
    def ok(self) -> bool:
        return self.at_risk == 0


@dataclass
class RiskSnapshot:
    """The money-at-risk panel: every check, as of `at` (unix seconds)."""

    at: float
    took_seconds: float
    grace_seconds: float
    expiry_grace_seconds: float
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None  # the database could not be read: nothing is known

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def _check_dict(self, c: CheckResult) -> dict[str, Any]:
        """A check for the page: each item also has a label, its age that matters, and whether it is at
        risk yet."""
        grace, expiry_grace = self.grace_seconds, self.expiry_grace_seconds
        items = [
            {**i, "label": item_label(c.name, i), "age": item_age(c.name, i),
             "at_risk": item_at_risk(c.name, i, grace=grace, expiry_grace=expiry_grace)}
            for i in c.items
        ]  # fmt: skip
        return {
            "name": c.name, "title": c.title, "rule": c.rule, "ok": c.ok, "at_risk": c.at_risk,
            "resolving": c.resolving, "total": c.total, "groups": c.groups, "items": items,
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "time": self.at,
            "took_seconds": round(self.took_seconds, 4),
            "grace_seconds": self.grace_seconds,
            "expiry_grace_seconds": self.expiry_grace_seconds,
            "error": self.error,
            "checks": [self._check_dict(c) for c in self.checks],
        }


def _seconds(value: float) -> str:
    if value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:.0f} s"


def snapshot_from_rows(
    rows: list[Any], *, at: float, took: float, grace: float, expiry_grace: float
) -> RiskSnapshot:
    """Rows of `snapshot_sql` (mappings; json columns as text or decoded) as a RiskSnapshot."""
    import json

    def decoded(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    by_name = {row["name"]: row for row in rows}
    snap = RiskSnapshot(at, took, grace, expiry_grace)
    for check in CHECKS:
        row = by_name[check.name]
        snap.checks.append(
            CheckResult(
                name=check.name,
                title=check.title,
                rule=check.at_risk.format(grace=_seconds(grace), expiry_grace=_seconds(expiry_grace)),
                at_risk=int(row["at_risk"]),
                resolving=int(row["resolving"]),
                total=int(row["total"]),
                groups={str(k): int(v) for k, v in (decoded(row["groups"]) or {}).items()},
                items=list(decoded(row["items"]) or []),
            )
        )
    return snap


async def read_snapshot(
    conn: Any, *, grace: float = 60.0, expiry_grace: float = 120.0, items: int = 100, feed_hours: float = 24.0
) -> RiskSnapshot:
    """Run the one statement on an asyncpg connection; the feed check covers the last `feed_hours`."""
    import time

    began, at = time.perf_counter(), time.time()
    since = id_floor("auth", at - feed_hours * 3600)
    rows = await conn.fetch(snapshot_sql(), float(grace), float(expiry_grace), int(items), since)
    return snapshot_from_rows(
        [dict(r) for r in rows],
        at=at,
        took=time.perf_counter() - began,
        grace=grace,
        expiry_grace=expiry_grace,
    )


def item_label(check: str, item: dict[str, Any]) -> str:
    """One item as a short line for people: its ids, then what is wrong with it."""
    if check in ("stray_holds", "overdue_holds"):
        money = f"{item['amount']} {item['currency']}"
        line = f"{item['id']} ({item['network_txn_id']}) {money} on {item['account_id']}"
        if check == "stray_holds":
            line += ", resolution pending" if item.get("unconfirmed") else ", nothing will resolve it"
        return line
    if check == "feed_misses":
        return f"{item['id']} ({item['nid']}) {item['amount']} {item['currency']}: {item['n']} feed items"
    if check == "dead_letters":
        return f"{item['service']}/{item['consumer']} #{item['id']} {item['event_type']} {item['event_id']}"
    if check == "ledger_sums":
        return f"{item['currency']} postings sum to {item['total']}"
    return str(item)


def item_age(check: str, item: dict[str, Any]) -> float | None:
    if check == "overdue_holds":
        return float(item["overdue_seconds"])
    value = item.get("age_seconds")
    return None if value is None else float(value)


def item_at_risk(check: str, item: dict[str, Any], *, grace: float, expiry_grace: float) -> bool:
    """Whether one item counts as at risk (the rule of `snapshot_sql`), or is still being resolved."""
    if check == "stray_holds":
        return float(item["age_seconds"]) >= grace
    if check == "overdue_holds":
        return float(item["overdue_seconds"]) >= expiry_grace
    if check == "feed_misses":
        return float(item["age_seconds"]) >= grace or int(item["n"]) > 1
    if check == "ledger_sums":
        return int(item["total"]) != 0
    return True
