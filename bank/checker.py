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
* `transfers_conserve`   every pot move and payment between customers is two opposite postings on the
                         bank's own customer or pot accounts (never an internal one): a payment between
                         two customers, a pot move between a pot and its own current account

Downstream, each checked only once its service has rows (so the checker works while they are built):
* `feed_once`            every approved spending authorisation has exactly one feed transaction
* `transfers_in_feed`    every pot move has its feed transaction, every payment one on each side
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

from services.gateway.ops import invariants as inv
from shared.config import to_libpq

EVENTUAL = frozenset(
    {"no_stray_holds", "feed_once", "transfers_in_feed", "webhooks_delivered", "push_once", "api_balance"}
)
MAX_EXAMPLES = 20  # violations listed per invariant (the count is always complete)
# The queries the ops page's money-at-risk panel shares (one definition: services/gateway/ops/invariants.py).
TOTALS, OVERDUE_HOLDS, STRAY_HOLDS = inv.LEDGER_TOTALS, inv.OVERDUE_HOLDS, inv.STRAY_HOLDS
FEED_MISSES, DEAD_LETTERS = inv.FEED_MISSES, inv.DEAD_LETTERS


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
FROM accounts.accounts a WHERE a.kind IN ('customer', 'pot')
"""
# Pot moves and payments (decision 0037): what is wrong with each entry that is not two opposite postings
# on customer or pot accounts (a payment: two customers' accounts of two people; a pot move: a pot and
# its own current account).
TRANSFER_ENTRIES = """
SELECT e.id, e.kind, e.reference, count(p.id) AS n, coalesce(sum(p.amount), 0) AS total,
       count(*) FILTER (WHERE a.kind = 'internal') AS internal,
       count(*) FILTER (WHERE a.kind = 'customer') AS customers,
       count(*) FILTER (WHERE a.kind = 'pot') AS pots,
       count(DISTINCT a.user_id) AS owners,
       bool_or(a.kind = 'pot' AND NOT EXISTS (
           SELECT 1 FROM accounts.pots t JOIN accounts.postings q ON q.account_id = t.current_account_id
           WHERE t.id = a.id AND q.entry_id = e.id)) AS foreign_pot
FROM accounts.journal_entries e
JOIN accounts.postings p ON p.entry_id = e.id
JOIN accounts.accounts a ON a.id = p.account_id
WHERE e.kind IN ('pot_deposit', 'pot_withdrawal', 'p2p_payment')
GROUP BY e.id, e.kind, e.reference
"""
TRANSFERS_IN_FEED = """
SELECT e.kind, e.reference, k.key
FROM accounts.journal_entries e
CROSS JOIN LATERAL unnest(CASE WHEN e.kind = 'p2p_payment'
    THEN ARRAY['p2p:' || e.reference || ':sent', 'p2p:' || e.reference || ':received']
    ELSE ARRAY['pot:' || e.reference] END) AS k(key)
WHERE e.kind IN ('pot_deposit', 'pot_withdrawal', 'p2p_payment')
  AND NOT EXISTS (SELECT 1 FROM transactions.transactions t WHERE t.source_key = k.key)
"""
AUTH_HOLDS = """
SELECT a.id, a.network_transaction_id AS nid, a.hold_id, a.held_amount, a.status,
       h.status AS hold_status, h.amount AS hold_amount, h.expires_at <= now() AS expired
FROM cards.authorisations a
LEFT JOIN accounts.holds h ON h.network_txn_id = a.hold_id
WHERE a.status = 'approved' AND a.hold_id IS NOT NULL AND a.held_amount > 0
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
        if wanted("transfers_conserve"):
            report.checked.append("transfers_conserve")
            rows = await conn.fetch(TRANSFER_ENTRIES)
            report.figures["transfers"] = len(rows)
            report.add("transfers_conserve", [_transfer_problem(r) for r in rows if _transfer_problem(r)])
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
        # Not an invariant (a consumer may park a poison event), but on the ops page's panel.
        dead: dict[str, int] = {}
        for r in await conn.fetch(DEAD_LETTERS):
            key = f"{r['service']}/{r['consumer']}"
            dead[key] = dead.get(key, 0) + 1
        report.figures["dead_letters"] = dead
    finally:
        await conn.close()
    if customers and gateway_url and (only is None or "api_balance" in only):
        await _api_balances(report, database_url, gateway_url, customers)
    return report


def _transfer_problem(r: Any) -> str:
    """What is wrong with a pot move's or a payment's journal entry ("" when nothing is)."""
    where = f"{r['kind']} {r['reference']} (entry {r['id']})"
    if r["n"] != 2 or r["total"] != 0:
        return f"{where}: {r['n']} postings summing to {r['total']}, not two opposite ones"
    if r["internal"]:
        return f"{where}: moves money to or from an internal account"
    if r["kind"] == "p2p_payment" and (r["customers"] != 2 or r["owners"] != 2):
        return f"{where}: not between two customers' accounts"
    if r["kind"] != "p2p_payment" and (r["customers"] != 1 or r["pots"] != 1 or r["foreign_pot"]):
        return f"{where}: not between a pot and its own current account"
    return ""


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
            rows = await conn.fetch(FEED_MISSES)
            report.figures["feed_transactions"] = await conn.fetchval(
                "SELECT count(*) FROM transactions.transactions"
            )
            report.add(
                "feed_once",
                [f"authorisation {r['id']} ({r['nid']}) has {r['n']} feed transactions, not 1" for r in rows],
            )
        else:
            report.not_applicable["feed_once"] = "transactions.transactions has no rows"
    if wanted("transfers_in_feed"):
        if await _has_rows(conn, "transactions.transactions"):
            report.checked.append("transfers_in_feed")
            report.add(
                "transfers_in_feed",
                [
                    f"{r['kind']} {r['reference']}: no feed transaction {r['key']}"
                    for r in await conn.fetch(TRANSFERS_IN_FEED)
                ],
            )
        else:
            report.not_applicable["transfers_in_feed"] = "transactions.transactions has no rows"
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


def risk_panel(snapshot: inv.RiskSnapshot, *, items: int = 5, every: float | None = None) -> Any:
    """The ops page's money-at-risk panel as a Rich renderable (`bank check --watch`): a table, which
    (unlike a Panel) never crops itself to the terminal's height."""
    from datetime import datetime

    from rich import box
    from rich.table import Table
    from rich.text import Text

    when = datetime.fromtimestamp(snapshot.at).strftime("%H:%M:%S")
    refresh = f", every {every:g} s" if every else ""
    if snapshot.error is not None:
        table = Table(box=box.ROUNDED, expand=True, border_style="red", title="Money at risk: UNKNOWN",
                      caption=f"{when}{refresh}")  # fmt: skip
        table.add_column("error")
        table.add_row(Text(snapshot.error, style="bold red"))
        return table
    at_risk = sum(c.at_risk for c in snapshot.checks)
    headline = "every invariant holds" if snapshot.ok else f"{at_risk} at risk"
    table = Table(
        box=box.ROUNDED, expand=True, border_style="green" if snapshot.ok else "red",
        title=Text(f"Money at risk: {headline}", style="bold green" if snapshot.ok else "bold red"),
        caption=f"{when}, read in {snapshot.took_seconds * 1000:.0f} ms{refresh}",
    )  # fmt: skip
    table.add_column("check")
    table.add_column("at risk", justify="right")
    table.add_column("being resolved", justify="right")
    table.add_column("items (oldest first: ids, age)")
    for c in snapshot.checks:
        style = "red" if not c.ok else ("yellow" if c.resolving else "green")
        listed = []
        for item in c.items[:items]:
            age = inv.item_age(c.name, item)
            listed.append(inv.item_label(c.name, item) + ("" if age is None else f" · {age:.0f} s"))
        if c.name == "dead_letters" and c.groups:
            listed.insert(0, ", ".join(f"{k}: {n}" for k, n in sorted(c.groups.items())))
        if len(c.items) < c.total and c.name != "ledger_sums":
            listed.append(f"… {c.total - len(c.items)} more")
        table.add_row(
            Text(f"{c.title} ({c.rule})", style=style), Text(str(c.at_risk), style=style),
            str(c.resolving) if c.resolving else "", "\n".join(listed),
        )  # fmt: skip
    return table


async def watch_risk(
    database_url: str, *, every: float = 10.0, grace: float = 60.0, expiry_grace: float = 120.0,
    rounds: int = 0, console: Any = None,
) -> bool:  # fmt: skip
    """Print the money-at-risk panel, read again every `every` seconds (`rounds` times; 0: until
    interrupted). True if the last reading found every invariant holding."""
    import asyncpg
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    conn: Any = None
    snapshot: inv.RiskSnapshot | None = None
    done = 0
    with Live(console=console, auto_refresh=False, vertical_overflow="visible") as live:
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            to_libpq(database_url), timeout=5,
                            server_settings={"default_transaction_read_only": "on",
                                             "application_name": "bank-check-watch"},
                        )  # fmt: skip
                    snapshot = await inv.read_snapshot(conn, grace=grace, expiry_grace=expiry_grace)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    if conn is not None:
                        conn.terminate()
                    conn = None
                    snapshot = inv.RiskSnapshot(time.time(), 0.0, grace, expiry_grace, error=str(exc))
                live.update(risk_panel(snapshot, every=every), refresh=True)
                done += 1
                if rounds and done >= rounds:
                    break
                await asyncio.sleep(every)
        finally:
            if conn is not None:
                await conn.close()
    return snapshot is not None and snapshot.ok


def check_command(
    database_url: str = typer.Option("", "--database-url", help="default: the bank's own database"),
    as_json: bool = typer.Option(False, "--json", help="the full report as JSON"),
    wait: float = typer.Option(0.0, "--wait", help="re-check eventual invariants for up to this long"),
    watch: bool = typer.Option(
        False, "--watch", help="the ops page's money-at-risk panel, read again every --every seconds (Ctrl-C)"
    ),
    every: float = typer.Option(10.0, "--every", min=1.0, help="with --watch: seconds between readings"),
    grace: float = typer.Option(
        60.0,
        "--grace",
        min=0.0,
        help="with --watch: a stray hold or a missing feed item is at risk past this age (s)",
    ),
    rounds: int = typer.Option(0, "--rounds", min=0, hidden=True, help="with --watch: stop after this many"),
) -> None:
    """Prove the bank's invariants from its database: the ledger balances, no money created or lost,
    holds accounted for, one feed item per authorisation, webhooks and pushes once. Exit 1 on a violation.
    With --watch: the ops page's money-at-risk panel in the terminal, refreshing.
    """
    from shared.config import BankSettings, load

    url = database_url or load(BankSettings).database_url
    if watch:
        try:
            ok = asyncio.run(watch_risk(url, every=every, grace=grace, rounds=rounds))
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
        raise typer.Exit(0 if ok else 1)
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
