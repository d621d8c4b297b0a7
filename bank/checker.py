"""The bank test's checker: what a bank must never do, proved from its database and its public API.

Run it after any run (`bank check`, or `check_bank(...)` from a test). It reads every service's
schema directly (it is an auditor, not a service) and, when given customers' tokens, their balances
through the gateway. Each invariant is named; a violation is a sentence naming the rows involved.

Money (always):
* `entries_balance`      every journal entry has at least two postings and they sum to zero per currency
* `ledger_sums_to_zero`  all postings of all accounts together sum to zero, per currency
* `balance_is_postings`  each customer balance equals the sum of its postings; `held` equals its active holds
* `no_negative_balance`  no customer's available balance is below zero by more than its recorded forced
                         movements (forced clearings, captures above their hold) explain
* `holds_accounted`      every approved authorisation's hold exists and is captured, released, expired,
                         or still active within its expiry; no hold stays active past its expiry
* `no_stray_holds`       every active hold is the hold of an approved authorisation (a hold that landed
                         after a 91 answer must have been released by the compensation job)
* `api_balance`          (with customers) /balance through the gateway equals the ledger

Downstream, each checked only once its service has rows (so the checker works while they are built):
* `feed_once`            every approved spending authorisation has exactly one feed transaction
* `webhooks_delivered`   every transaction.created reached each webhook that was active for the account
                         (a delivery succeeded), exactly one delivery (one webhook-id) per event and
                         webhook, and (with a receiver's log) each webhook-id arrived, de-duplicated once
* `push_once`            at most one push per device per event, in the database and at the provider

Eventual invariants (`EVENTUAL`) may be briefly false right after a fault; `settle` re-checks them
until they hold or time runs out. The others must hold at any instant.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import typer

from shared.config import to_libpq

EVENTUAL = frozenset({"no_stray_holds", "feed_once", "webhooks_delivered", "push_once", "api_balance"})
MAX_EXAMPLES = 20  # violations listed per invariant (the count is always complete)
SPENDING_CODES = ("00", "01")  # processing codes that make a feed item (services/transactions/feed.py)


@dataclass
class Violation:
    invariant: str
    detail: str


@dataclass
class CheckReport:
    checked: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)  # invariant -> why it was not checked
    violations: list[Violation] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # violations per invariant
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, invariant: str, details: Sequence[str]) -> None:
        self.counts[invariant] = len(details)
        self.violations.extend(Violation(invariant, d) for d in details[:MAX_EXAMPLES])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "not_applicable": self.not_applicable,
            "violations_total": sum(self.counts.values()),
            "violations_by_invariant": {k: v for k, v in self.counts.items() if v},
            "violations": [asdict(v) for v in self.violations],
            "figures": self.figures,
        }


@dataclass
class Customer:
    """A customer the checker may read through the public API."""

    account_id: str
    token: str


# SQL -------------------------------------------------------------------------------------------

UNBALANCED_ENTRIES = """
SELECT entry_id, currency, sum(amount) AS total, count(*) AS n FROM accounts.postings
GROUP BY entry_id, currency HAVING sum(amount) <> 0 OR count(*) < 2
"""
EMPTY_ENTRIES = """
SELECT e.id FROM accounts.journal_entries e
WHERE NOT EXISTS (SELECT 1 FROM accounts.postings p WHERE p.entry_id = e.id)
"""
TOTALS = "SELECT currency, sum(amount) AS total FROM accounts.postings GROUP BY currency"
BALANCES = """
SELECT a.id, a.balance, a.held,
       coalesce((SELECT sum(p.amount) FROM accounts.postings p WHERE p.account_id = a.id), 0) AS posted,
       coalesce((SELECT sum(h.amount) FROM accounts.holds h
                 WHERE h.account_id = a.id AND h.status = 'active'), 0) AS holding,
       coalesce((SELECT -sum(p.amount) FROM accounts.postings p
                 JOIN accounts.journal_entries e ON e.id = p.entry_id
                 WHERE p.account_id = a.id AND e.kind = 'card_force_debit'), 0) AS forced,
       coalesce((SELECT sum(h.captured_amount - h.amount) FROM accounts.holds h
                 WHERE h.account_id = a.id AND h.status = 'captured' AND h.captured_amount > h.amount), 0)
           AS over_captured
FROM accounts.accounts a WHERE a.kind = 'customer'
"""
AUTH_HOLDS = """
SELECT a.id, a.network_transaction_id AS nid, a.hold_id, a.held_amount, a.status,
       h.status AS hold_status, h.amount AS hold_amount, h.expires_at <= now() AS expired
FROM cards.authorisations a
LEFT JOIN accounts.holds h ON h.network_txn_id = a.hold_id
WHERE a.status = 'approved' AND a.hold_id IS NOT NULL AND a.held_amount > 0
"""
OVERDUE_HOLDS = """
SELECT id, network_txn_id FROM accounts.holds WHERE status = 'active' AND expires_at <= now()
"""
STRAY_HOLDS = """
SELECT h.id, h.network_txn_id, h.amount, h.account_id FROM accounts.holds h
WHERE h.status = 'active' AND NOT EXISTS (
    SELECT 1 FROM cards.authorisations a WHERE a.hold_id = h.network_txn_id AND a.status = 'approved')
"""
FEED = """
SELECT a.id, a.network_transaction_id AS nid,
       (SELECT count(*) FROM transactions.transactions t WHERE t.source_key = 'auth:' || a.id) AS n
FROM cards.authorisations a
WHERE a.status <> 'declined' AND left(a.processing_code, 2) = ANY($1::text[])
"""
# transaction.created events as the transactions service emitted them (its outbox keeps them).
WEBHOOK_EXPECTED = """
SELECT w.id AS webhook_id, o.event_id,
       (SELECT count(*) FROM webhooks.deliveries d
        WHERE d.webhook_id = w.id AND d.event_id = o.event_id) AS deliveries,
       (SELECT count(*) FROM webhooks.deliveries d WHERE d.webhook_id = w.id AND d.event_id = o.event_id
        AND d.status = 'succeeded') AS succeeded
FROM webhooks.webhooks w
JOIN transactions.outbox o ON o.key = w.account_id AND o.event_type = 'transaction.created'
     AND o.created_at > w.created
WHERE w.status = 'active'
"""
WEBHOOK_DELIVERY_IDS = """
SELECT d.id, d.webhook_id, d.event_id FROM webhooks.deliveries d WHERE d.event_type = 'transaction.created'
"""
PUSH_DUPLICATES = """
SELECT device_id, notification_key, count(*) AS n FROM notifications.deliveries
GROUP BY device_id, notification_key HAVING count(*) > 1
"""
PUSH_KEYS = "SELECT push_id::text, notification_key, device_id FROM notifications.deliveries"


async def _has_rows(conn: Any, table: str) -> bool:
    try:
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"))
    except Exception:  # the table does not exist (yet)
        return False


async def check_bank(
    database_url: str,
    *,
    gateway_url: str | None = None,
    customers: Sequence[Customer] = (),
    push_url: str | None = None,
    webhook_receipts: Sequence[dict[str, str]] | None = None,
    only: frozenset[str] | None = None,
) -> CheckReport:
    """Check every invariant once. `webhook_receipts`: what a webhook receiver got, each
    `{"webhook_id": <our webhook id>, "message_id": <the webhook-id header>}`."""
    import asyncpg

    report = CheckReport()
    conn = await asyncpg.connect(to_libpq(database_url))
    try:

        def wanted(name: str) -> bool:
            return only is None or name in only

        if wanted("entries_balance"):
            rows = await conn.fetch(UNBALANCED_ENTRIES)
            empty = await conn.fetch(EMPTY_ENTRIES)
            report.checked.append("entries_balance")
            report.add(
                "entries_balance",
                [
                    f"entry {r['entry_id']}: {r['n']} {r['currency']} postings sum to {r['total']}"
                    for r in rows
                ]
                + [f"entry {r['id']} has no postings" for r in empty],
            )
        if wanted("ledger_sums_to_zero"):
            totals = await conn.fetch(TOTALS)
            report.checked.append("ledger_sums_to_zero")
            report.add(
                "ledger_sums_to_zero",
                [f"all {r['currency']} postings sum to {r['total']}, not 0" for r in totals if r["total"]],
            )
        balances = await conn.fetch(BALANCES)
        report.figures["customer_accounts"] = len(balances)
        report.figures["journal_entries"] = await conn.fetchval(
            "SELECT count(*) FROM accounts.journal_entries"
        )
        report.figures["forced_accounts"] = sum(1 for r in balances if r["forced"] or r["over_captured"])
        report.figures["negative_accounts"] = sum(1 for r in balances if r["balance"] < 0)
        if wanted("balance_is_postings"):
            report.checked.append("balance_is_postings")
            problems = []
            for r in balances:
                if r["balance"] != r["posted"]:
                    problems.append(
                        f"{r['id']}: balance {r['balance']} but its postings sum to {r['posted']}"
                    )
                if r["held"] != r["holding"]:
                    problems.append(f"{r['id']}: held {r['held']} but its active holds sum to {r['holding']}")
            report.add("balance_is_postings", problems)
        if wanted("no_negative_balance"):
            report.checked.append("no_negative_balance")
            report.add(
                "no_negative_balance",
                [
                    f"{r['id']}: balance {r['balance']}, available {r['balance'] - r['held']}, more than "
                    f"its forced clearings ({r['forced']}) and over-captures ({r['over_captured']}) explain"
                    for r in balances
                    # Without its forced movements the account would never have gone below zero.
                    if r["balance"] - r["held"] + r["forced"] + r["over_captured"] < 0
                ],
            )
        cards_exist = await _has_rows(conn, "cards.authorisations")
        report.figures["authorisations"] = (
            dict(
                (r["status"], r["n"])
                for r in await conn.fetch("SELECT status, count(*) AS n FROM cards.authorisations GROUP BY 1")
            )
            if cards_exist
            else {}
        )
        report.figures["holds"] = dict(
            (r["status"], r["n"])
            for r in await conn.fetch("SELECT status, count(*) AS n FROM accounts.holds GROUP BY 1")
        )
        if wanted("holds_accounted"):
            report.checked.append("holds_accounted")
            problems = []
            for r in await conn.fetch(AUTH_HOLDS) if cards_exist else []:
                where = f"authorisation {r['id']} ({r['nid']}, hold {r['hold_id']})"
                if r["hold_status"] is None:
                    if r["hold_id"] == r["nid"]:  # a re-hold after a partial reversal may be "unknown"
                        problems.append(f"{where}: approved with {r['held_amount']} held, but no such hold")
                elif r["hold_status"] == "declined":
                    problems.append(f"{where}: approved, but accounts declined its hold")
                elif r["hold_status"] == "active" and r["expired"]:
                    problems.append(f"{where}: hold still active past its expiry")
            problems += [
                f"hold {r['id']} ({r['network_txn_id']}) active past its expiry"
                for r in await conn.fetch(OVERDUE_HOLDS)
            ]
            report.add("holds_accounted", problems)
        if wanted("no_stray_holds"):
            report.checked.append("no_stray_holds")
            report.add(
                "no_stray_holds",
                [
                    f"hold {r['id']} ({r['network_txn_id']}, {r['amount']} on {r['account_id']}) is active "
                    "but no approved authorisation holds it"
                    for r in await conn.fetch(STRAY_HOLDS)
                ],
            )
        await _downstream(conn, report, wanted, push_url, webhook_receipts)
    finally:
        await conn.close()
    if customers and gateway_url and (only is None or "api_balance" in only):
        await _api_balances(report, database_url, gateway_url, customers)
    return report


async def _downstream(
    conn: Any,
    report: CheckReport,
    wanted: Any,
    push_url: str | None,
    webhook_receipts: Sequence[dict[str, str]] | None,
) -> None:
    if wanted("feed_once"):
        if await _has_rows(conn, "transactions.transactions"):
            report.checked.append("feed_once")
            rows = await conn.fetch(FEED, list(SPENDING_CODES))
            report.figures["feed_transactions"] = await conn.fetchval(
                "SELECT count(*) FROM transactions.transactions"
            )
            report.add(
                "feed_once",
                [
                    f"authorisation {r['id']} ({r['nid']}) has {r['n']} feed transactions, not 1"
                    for r in rows
                    if r["n"] != 1
                ],
            )
        else:
            report.not_applicable["feed_once"] = "transactions.transactions has no rows"
    if wanted("webhooks_delivered"):
        if await _has_rows(conn, "webhooks.webhooks") and await _has_rows(conn, "transactions.outbox"):
            report.checked.append("webhooks_delivered")
            rows = await conn.fetch(WEBHOOK_EXPECTED)
            report.figures["webhook_events_expected"] = len(rows)
            problems = [
                f"webhook {r['webhook_id']}: transaction.created {r['event_id']} has "
                f"{r['deliveries']} deliveries ({r['succeeded']} succeeded), not exactly 1 succeeded"
                for r in rows
                if r["deliveries"] != 1 or r["succeeded"] != 1
            ]
            if webhook_receipts is not None:
                got: dict[tuple[str, str], int] = {}
                for receipt in webhook_receipts:
                    key = (receipt["webhook_id"], receipt["message_id"])
                    got[key] = got.get(key, 0) + 1
                report.figures["webhook_requests_received"] = len(webhook_receipts)
                report.figures["webhook_ids_received"] = len(got)
                ids = {
                    (r["webhook_id"], r["event_id"]): r["id"] for r in await conn.fetch(WEBHOOK_DELIVERY_IDS)
                }
                for r in rows:
                    message = ids.get((r["webhook_id"], r["event_id"]))
                    if message is not None and (r["webhook_id"], message) not in got:
                        problems.append(
                            f"webhook {r['webhook_id']}: {message} (event {r['event_id']}) never reached "
                            "the receiver"
                        )
            report.add("webhooks_delivered", problems)
        else:
            report.not_applicable["webhooks_delivered"] = "no webhooks, or no transaction.created yet"
    if wanted("push_once"):
        if await _has_rows(conn, "notifications.deliveries"):
            report.checked.append("push_once")
            problems = [
                f"device {r['device_id']}: {r['n']} pushes for {r['notification_key']}"
                for r in await conn.fetch(PUSH_DUPLICATES)
            ]
            report.figures["pushes"] = await conn.fetchval("SELECT count(*) FROM notifications.deliveries")
            if push_url:
                keys = {
                    r["push_id"]: (r["device_id"], r["notification_key"]) for r in await conn.fetch(PUSH_KEYS)
                }
                received = await _provider_receipts(push_url)
                seen: dict[tuple[str, str], set[str]] = {}
                for item in received:
                    device_key = keys.get(str(item.get("push_id", "")).lower()) or keys.get(
                        str(item.get("push_id", ""))
                    )
                    if device_key is not None:
                        seen.setdefault(device_key, set()).add(str(item["push_id"]))
                report.figures["pushes_received"] = len(received)
                problems += [
                    f"device {device}: {len(ids)} different pushes reached the provider for {key}"
                    for (device, key), ids in seen.items()
                    if len(ids) > 1
                ]
            report.add("push_once", problems)
        else:
            report.not_applicable["push_once"] = "notifications.deliveries has no rows"


async def _provider_receipts(push_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            r = await client.get(f"{push_url}/_fake/received")
        except httpx.HTTPError:
            return []
    if r.status_code != 200:
        return []
    return list(r.json().get("received", []))


async def _api_balances(
    report: CheckReport, database_url: str, gateway_url: str, customers: Sequence[Customer]
) -> None:
    import asyncpg

    report.checked.append("api_balance")
    conn = await asyncpg.connect(to_libpq(database_url))
    try:
        ledger = {
            r["id"]: (r["balance"], r["held"])
            for r in await conn.fetch(
                "SELECT id, balance, held FROM accounts.accounts WHERE id = ANY($1::text[])",
                [c.account_id for c in customers],
            )
        }
    finally:
        await conn.close()
    problems = []
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=15) as client:

        async def one(c: Customer) -> None:
            async with gate:
                r = await client.get(
                    "/balance",
                    params={"account_id": c.account_id},
                    headers={"Authorization": f"Bearer {c.token}"},
                )
            if r.status_code != 200:
                problems.append(f"{c.account_id}: /balance answered {r.status_code}")
                return
            body = r.json()
            balance, held = ledger.get(c.account_id, (None, None))
            if balance is None or body.get("total_balance", body.get("balance")) is None:
                problems.append(f"{c.account_id}: not in the ledger or no balance in {body}")
                return
            if held is not None and body.get("balance") not in (balance - held, balance):
                problems.append(
                    f"{c.account_id}: /balance says {body.get('balance')}, the ledger {balance} - {held} held"
                )

        await asyncio.gather(*(one(c) for c in customers))
    report.add("api_balance", problems)


async def settle(
    database_url: str, *, limit: float = 60.0, interval: float = 1.0, **kwargs: Any
) -> CheckReport:
    """Check; while only eventual invariants are violated, check again until they hold or `limit`."""
    began = time.monotonic()
    while True:
        report = await check_bank(database_url, **kwargs)
        hard = [v for v in report.violations if v.invariant not in EVENTUAL]
        if report.ok or hard or time.monotonic() - began > limit:
            report.figures["settle_seconds"] = round(time.monotonic() - began, 2)
            return report
        await asyncio.sleep(interval)


def check_command(
    database_url: str = typer.Option("", "--database-url", help="default: the bank's own database"),
    as_json: bool = typer.Option(False, "--json", help="the full report as JSON"),
    wait: float = typer.Option(0.0, "--wait", help="re-check eventual invariants for up to this long"),
) -> None:
    """Prove the bank's invariants from its database: the ledger balances, no money created or lost,
    holds accounted for, one feed item per authorisation, webhooks and pushes once. Exit 1 on a violation.
    """
    from shared.config import BankSettings, load

    url = database_url or load(BankSettings).database_url
    report = asyncio.run(settle(url, limit=wait) if wait else check_bank(url))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        typer.echo(f"checked: {', '.join(report.checked)}")
        for name, why in report.not_applicable.items():
            typer.echo(f"not applicable: {name} ({why})")
        for v in report.violations:
            typer.echo(f"VIOLATION {v.invariant}: {v.detail}")
        total = sum(report.counts.values())
        typer.echo(f"{total} violations" if total else "all invariants hold")
    raise typer.Exit(0 if report.ok else 1)
