"""The money-at-risk panel on a real database: a hold stranded on purpose turns it red with that hold's
id (on the page's JSON, in the exported gauges, in `bank check` and in `bank check --watch`), and it
turns green once accounts' resolution releases the hold. Totals come from committed rows.

The strand is the crash of decision 0031: accounts placed a provisional hold for cards' batch
(`POST /internal/holds/batch`), and cards died before recording the authorisation.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import text

from bank.checker import check_bank, risk_panel, watch_risk
from services.gateway.ops import invariants as inv
from services.gateway.ops.auditor import Auditor, OpsSettings
from shared.config import BankSettings, to_libpq
from shared.db import Database
from tests.accounts.conftest import INTERNAL_TOKEN
from tests.cards.conftest import Bank, authorisation, reversal, running_bank


@pytest_asyncio.fixture(loop_scope="session")
async def bank(db: Database, settings: BankSettings) -> AsyncIterator[Bank]:
    async with running_bank(db, settings) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def conn(settings: BankSettings) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(
        to_libpq(settings.database_url), server_settings={"default_transaction_read_only": "on"}
    )
    yield connection
    await connection.close()


async def strand_a_hold(bank: Bank, account_id: str, amount: int = 700) -> str:
    """accounts places a batch's hold, then cards 'crashes': no authorisation is ever recorded."""
    nid = "STRAND" + uuid.uuid4().hex[:10].upper()
    async with httpx.AsyncClient(base_url=bank.accounts.url, timeout=10) as http:
        r = await http.post(
            "/internal/holds/batch",
            json={
                "holds": [
                    {"account_id": account_id, "network_txn_id": nid, "amount": amount, "currency": "GBP"}
                ]
            },
            headers={"x-internal-token": INTERNAL_TOKEN},
        )
    assert r.status_code == 200, r.text
    assert r.json()["holds"][0]["status"] == "active", r.text
    return nid


def exported() -> str:
    return generate_latest(REGISTRY).decode()


async def test_a_stranded_hold_turns_the_panel_red_then_green(
    bank: Bank, conn: Any, settings: BankSettings
) -> None:
    customer = await bank.customer(balance=10_000)
    auditor = Auditor(settings.database_url, OpsSettings(refresh_seconds=0.2, grace_seconds=0))
    try:
        assert (await auditor.risk()).ok, (await auditor.risk()).to_dict()

        nid = await strand_a_hold(bank, customer.account_id)
        [hold] = await bank.rows("SELECT id FROM accounts.holds WHERE network_txn_id = :n", n=nid)
        await asyncio.sleep(0.25)  # past the auditor's refresh
        await auditor.refresh_round()  # the only gateway here: it takes the lock and exports
        assert auditor.leader
        snap = await auditor.risk()
        assert not snap.ok
        stray = snap.check("stray_holds")
        assert stray.at_risk == 1 and stray.items[0]["id"] == hold["id"]
        assert stray.items[0]["network_txn_id"] == nid and stray.items[0]["unconfirmed"] is True
        assert [c.name for c in snap.checks if not c.ok] == ["stray_holds"]
        assert 'bank_invariant_violations{check="stray_holds"} 1.0' in exported()

        # With the default grace, the same young hold is "being resolved", not at risk.
        young = await inv.read_snapshot(conn, grace=60)
        assert young.ok and young.check("stray_holds").resolving == 1

        # bank check (same query) names it; bank check --watch prints it.
        report = await check_bank(settings.database_url, only=frozenset({"no_stray_holds"}))
        assert report.counts["no_stray_holds"] == 1 and nid in report.violations[0].detail
        from rich.console import Console

        out = io.StringIO()
        ok = await watch_risk(
            settings.database_url, every=1, grace=0, rounds=1, console=Console(file=out, width=200)
        )
        assert not ok and hold["id"] in out.getvalue() and "Money at risk: 1 at risk" in out.getvalue()

        # accounts' resolution asks cards, which closes the id (a voided authorisation); the hold goes.
        assert await bank.resolve_holds() == 1
        await asyncio.sleep(0.25)
        await auditor.refresh_round()
        snap = await auditor.risk()
        assert snap.ok, snap.to_dict()
        assert 'bank_invariant_violations{check="stray_holds"} 0.0' in exported()
        report = await check_bank(settings.database_url, only=frozenset({"no_stray_holds"}))
        assert report.ok
    finally:
        await auditor.close()


async def test_totals_are_committed_rows(bank: Bank, settings: BankSettings) -> None:
    customer = await bank.customer(balance=5_000)
    card = await bank.issue(customer)
    approved = await bank.authorise(authorisation(card, amount=1_915))
    declined = await bank.authorise(authorisation(card, amount=50_000))
    assert approved["response_code"] == "00" and declined["response_code"] == "51"

    auditor = Auditor(settings.database_url, OpsSettings(refresh_seconds=0.1))
    try:
        totals = await auditor.totals()
    finally:
        await auditor.close()
    assert totals["authorisations"]["total"] == 2 and totals["authorisations"]["approved"] == 1
    assert totals["declines"] == [
        {"reason": "INSUFFICIENT_FUNDS", "detail": "insufficient_funds", "response_code": "51", "n": 1}
    ]
    assert totals["authorised_minor"] == {"GBP": 1_915}
    assert totals["topups"] == {"GBP": {"count": 1, "minor": 5_000}}
    assert totals["holds_outstanding"] == {"GBP": {"count": 1, "minor": 1_915}}
    assert totals["cards_by_status"] == {"active": 1}


async def test_without_the_database_the_page_says_so() -> None:
    auditor = Auditor("postgresql://nobody@127.0.0.1:1/none", OpsSettings(refresh_seconds=5))
    began = time.monotonic()
    snap = await auditor.risk()
    totals = await auditor.totals()  # the failure is remembered for a refresh: not tried again
    assert time.monotonic() - began < 5
    assert not snap.ok and snap.error and "cannot read the bank's database" in snap.error
    assert "cannot read" in totals["error"]
    off = Auditor("postgresql://x@127.0.0.1:1/none", OpsSettings(database_url="off"))
    assert "off" in str((await off.risk()).error)
    await auditor.close()


def test_the_panel_renders_every_check() -> None:
    from rich.console import Console

    rows = [
        {"name": name, "at_risk": 0, "resolving": 0, "total": 0, "groups": None, "items": "[]"}
        for name in inv.CHECK_NAMES
    ]
    snap = inv.snapshot_from_rows(rows, at=time.time(), took=0.01, grace=60, expiry_grace=120)
    out = io.StringIO()
    Console(file=out, width=160).print(risk_panel(snap))
    text = out.getvalue()
    assert "every invariant holds" in text
    for check in inv.CHECKS:
        assert check.title in text


def test_bank_check_watch_prints_the_panel(settings: BankSettings) -> None:
    from typer.testing import CliRunner

    from bank.cli import app

    url = settings.database_url
    result = CliRunner().invoke(
        app,
        ["check", "--database-url", url, "--watch", "--every", "1", "--rounds", "2"],
        env={"COLUMNS": "220"},
    )
    assert result.exit_code in (0, 1), result.output
    assert "Money at risk" in result.output
    for check in inv.CHECKS:
        assert check.title[:30] in result.output


async def test_each_check_finds_its_items(bank: Bank, conn: Any) -> None:
    """An approval with no feed item (no transactions service runs here) is being resolved while young
    and at risk after the grace; a partial reversal's re-hold is backed (not stray); a dead letter is at
    risk until marked resolved."""
    customer = await bank.customer(balance=10_000)
    card = await bank.issue(customer)
    first = authorisation(card, amount=3_000)
    assert (await bank.authorise(first))["response_code"] == "00"
    assert (await bank.reverse(reversal(first, replacement_amount=1_000)))["response_code"] == "00"
    [auth] = await bank.rows(
        "SELECT id, hold_id FROM cards.authorisations WHERE network_transaction_id = :n",
        n=first["network_transaction_id"],
    )
    assert auth["hold_id"].endswith(":r1000")  # the re-hold, under its own id

    young = await inv.read_snapshot(conn, grace=60)
    assert young.check("stray_holds").total == 0  # the re-hold is the authorisation's
    assert young.check("feed_misses").resolving == 1 and young.check("feed_misses").at_risk == 0
    old = await inv.read_snapshot(conn, grace=0)
    [missing] = old.check("feed_misses").items
    assert missing["id"] == auth["id"] and missing["n"] == 0 and not old.ok
    assert (await inv.read_snapshot(conn, grace=0, feed_hours=1e-6)).check("feed_misses").total == 0

    async with bank.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO notifications.dead_letters (consumer, event_id, event_type, topic, partition, "
                "\"offset\", payload, error, attempts) VALUES ('notifications.push', 'evt_1', "
                "'transaction.created', 'transactions.feed', 0, 7, '\\x00', 'boom', 3)"
            )
        )
    dead = (await inv.read_snapshot(conn, grace=60)).check("dead_letters")
    assert dead.at_risk == 1 and dead.groups == {"notifications/notifications.push": 1}
    assert dead.items[0]["event_id"] == "evt_1" and dead.items[0]["error"] == "boom"
    async with bank.db.transaction() as session:
        await session.execute(text("UPDATE notifications.dead_letters SET resolved_at = now()"))
    assert (await inv.read_snapshot(conn, grace=60)).check("dead_letters").ok


async def test_one_gateway_reads_and_exports_for_all_and_another_takes_over(
    db: Database, settings: BankSettings
) -> None:
    """Two gateway replicas: only the advisory lock's holder runs the timer's statement; when its
    connection goes, the other takes the lock at its next round."""
    first = Auditor(settings.database_url, OpsSettings(refresh_seconds=0.1))
    second = Auditor(settings.database_url, OpsSettings(refresh_seconds=0.1))
    try:
        await first.refresh_round()
        await second.refresh_round()
        assert first.leader and not second.leader
        assert first._risk is not None and second._risk is None  # the other read nothing
        await first.close()
        await second.refresh_round()
        assert second.leader and second._risk is not None
    finally:
        await first.close()
        await second.close()
