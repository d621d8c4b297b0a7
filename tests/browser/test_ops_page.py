"""The ops page in headless Chromium against a running bank, and one trace across the services.

Waiting is on the thing awaited (Playwright's wait_for_* polling the page; the event log's NOTIFY),
never on a clock; the timeouts only bound how long a failure takes to report.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser.conftest import NETWORK_KEY, OPS_TOKEN, ROOT, RunningBank, message

WAIT_MS = 45_000
# Topics of the authorisation's trace, and the services whose consumers must continue it.
TRACE_TOPICS = ("cards.authorisations", "transactions.feed")


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def trace_id_of(response: httpx.Response) -> str:
    return response.headers["traceparent"].split("-")[1]


def spans_of(bank: RunningBank, trace_id: str) -> list[dict[str, Any]]:
    r = bank.http.get("/ops/api/traces", params={"q": trace_id}, headers=bank.ops_headers)
    assert r.status_code == 200, r.text
    spans: list[dict[str, Any]] = r.json()["spans"]
    return spans


def expected_services(consumers: list[dict[str, Any]], spans: list[dict[str, Any]]) -> set[str]:
    """gateway, cards and accounts always; and every service with a consumer on a topic that the
    trace emitted to (among TRACE_TOPICS): its handler must have continued the trace."""
    emitted = {s["attributes"].get("messaging.destination.name") for s in spans if s["kind"] == "producer"}
    return {"gateway", "cards", "accounts"} | {
        c["service"] for c in consumers if c["topic"] in TRACE_TOPICS and c["topic"] in emitted
    }


def test_a_network_authorisation_is_one_trace_across_the_services(
    ops_bank: RunningBank, artefacts: Path
) -> None:
    trace_id = trace_id_of(ops_bank.authorise())
    url = f"postgresql://postgres@127.0.0.1:{ops_bank.env['BANK_PG_PORT']}/bank"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN events_log")
        for _ in range(120):  # each round waits for the bank's next event (or half a second)
            summary = ops_bank.summary()
            spans = spans_of(ops_bank, trace_id)
            found = {s["service"] for s in spans}
            expected = expected_services(summary["consumers"], spans)
            # Settled: every event published and consumed, so the trace can grow no further.
            settled = not any(summary["outbox"].values()) and not any(c["lag"] for c in summary["consumers"])
            if settled and expected <= found:
                break
            for _note in conn.notifies(timeout=0.5, stop_after=1):
                pass
    (artefacts / "trace-services.json").write_text(
        json.dumps(
            {
                "trace_id": trace_id,
                "services": sorted(found),
                "spans": sorted(f"{s['service']}: {s['name']}" for s in spans),
            },
            indent=2,
        )
    )
    print(f"\ntrace {trace_id}: {len(spans)} spans from {sorted(found)}")
    assert {s["trace_id"] for s in spans} == {trace_id}
    assert expected <= found, f"expected spans from {sorted(expected)}, found {sorted(found)}"
    names = {(s["service"], s["name"]) for s in spans}
    assert ("cards", "POST /network/authorisations") in names
    assert any(svc == "accounts" and name.startswith("outbox.emit") for svc, name in names)
    assert any(svc == "cards" and name == "outbox.emit card.authorisation.approved" for svc, name in names)
    assert any(name.startswith("relay.publish") for _, name in names)


def pid_listening_on(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return int(conn.pid)
    raise AssertionError(f"nothing listens on {url}")


def wait_for_new_listener(url: str, old_pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = pid_listening_on(url)
        except AssertionError:
            pid = old_pid
        if pid != old_pid:
            return pid
        time.sleep(0.2)
    raise AssertionError(f"no new process listens on {url} within {timeout} s")


def auth_total(page: Page) -> int:
    return int(page.inner_text("#auth-total"))


def test_the_ops_page_in_a_browser(ops_bank: RunningBank, browser: Browser, artefacts: Path) -> None:
    # Refused without the credential, in the browser and to a plain client.
    # (A page navigation would stop at Chromium's sign-in prompt: ask through the context instead.)
    anonymous = browser.new_context()
    for path in ("/ops", "/ops/api/summary"):
        refused = anonymous.request.get(f"{ops_bank.gateway}{path}", timeout=WAIT_MS)
        assert refused.status == 401, path
        assert refused.json()["code"] == "unauthorized.ops_credential"
    anonymous.close()
    r = httpx.get(f"{ops_bank.gateway}/ops/api/summary")
    assert r.status_code == 401 and r.json()["code"] == "unauthorized.ops_credential"

    context = browser.new_context(
        http_credentials={"username": "ops", "password": OPS_TOKEN}, viewport={"width": 1400, "height": 1800}
    )
    page = context.new_page()
    response = page.goto(f"{ops_bank.gateway}/ops")
    assert response is not None and response.status == 200
    for name in ("gateway", "accounts", "cards", "transactions", "webhooks", "notifications"):
        page.wait_for_selector(f"#svc-{name}[data-state=up]", timeout=WAIT_MS)

    # The authorisation counter rises as the network sends authorisations.
    before = auth_total(page)
    answers = [ops_bank.authorise(amount=100 + i) for i in range(8)]
    page.wait_for_function(
        f"Number(document.getElementById('auth-total').textContent) >= {before + len(answers)}",
        timeout=WAIT_MS,
    )
    assert auth_total(page) >= before + len(answers)
    page.wait_for_selector("#auth-chart polyline", timeout=WAIT_MS)
    page.screenshot(path=str(artefacts / "ops-authorisations.png"), full_page=True)

    # A real authorisation's trace as a waterfall across the services.
    trace_id = trace_id_of(answers[-1])
    page.fill("#trace-q", trace_id)
    page.click("#trace-go")
    for service in ("gateway", "cards", "accounts"):
        page.wait_for_selector(f"#waterfall .span-row[data-service={service}]", timeout=WAIT_MS)
    assert trace_id in page.inner_text("#waterfall")
    page.screenshot(path=str(artefacts / "ops-trace-waterfall.png"), full_page=True)

    # A stopped service is marked down (paused, so `bank up` does not shut the bank down), then up again.
    pid = pid_listening_on(ops_bank.url_of("webhooks"))
    os.kill(pid, signal.SIGSTOP)
    try:
        page.wait_for_selector("#svc-webhooks[data-state=down]", timeout=WAIT_MS)
        assert "DOWN" in page.inner_text("#svc-webhooks")
        page.screenshot(path=str(artefacts / "ops-service-down.png"), full_page=True)
    finally:
        os.kill(pid, signal.SIGCONT)
    page.wait_for_selector("#svc-webhooks[data-state=up]", timeout=WAIT_MS)
    context.close()


def ops_page(ops_bank: RunningBank, browser: Browser) -> tuple[Any, Page]:
    context = browser.new_context(
        http_credentials={"username": "ops", "password": OPS_TOKEN}, viewport={"width": 1400, "height": 1800}
    )
    page = context.new_page()
    response = page.goto(f"{ops_bank.gateway}/ops")
    assert response is not None and response.status == 200
    return context, page


def test_a_stranded_hold_turns_the_money_at_risk_panel_red_then_green(
    ops_bank: RunningBank, browser: Browser, artefacts: Path
) -> None:
    """A crash between hold and record: accounts placed a batch's provisional hold, and cards died
    before recording the authorisation (decision 0031). The panel names the hold, then goes green
    when accounts' resolution releases it."""
    context, page = ops_page(ops_bank, browser)
    for amount in (1915, 2360, 480, 120_000_000):  # some traffic for the picture (the last declined: 51)
        ops_bank.authorise(amount=amount)
    page.wait_for_selector("#risk[data-state=ok]", timeout=WAIT_MS)

    nid = "STRAND" + uuid.uuid4().hex[:10].upper()
    r = httpx.post(
        f"{ops_bank.url_of('accounts')}/internal/holds/batch",
        json={"holds": [{"account_id": ops_bank.card["account_id"], "network_txn_id": nid, "amount": 4_200,
                         "currency": "GBP"}]},
        headers={"x-internal-token": ops_bank.env.get("BANK_INTERNAL_TOKEN", "dev-internal-token")},
        timeout=15,
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["holds"][0]["status"] == "active", r.text
    with psycopg.connect(ops_bank.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM accounts.holds WHERE network_txn_id = %s", (nid,)).fetchone()
    assert row is not None
    hold_id = row[0]

    # Red once the hold is older than the grace, with its id on the row; its link lists it with its age.
    page.wait_for_selector("#risk[data-state=risk]", timeout=WAIT_MS)
    row_text = page.inner_text("#risk-row-stray_holds")
    assert page.get_attribute("#risk-row-stray_holds", "data-state") == "risk"
    assert hold_id in row_text and nid in row_text
    page.click("#risk-row-stray_holds a")
    page.wait_for_selector(f"#risk-items-table tr.risk-item[data-id='{hold_id}']", timeout=WAIT_MS)
    assert "s" in page.inner_text(f"#risk-items-table tr.risk-item[data-id='{hold_id}']")  # its age
    page.screenshot(path=str(artefacts / "ops-money-at-risk.png"), full_page=True)
    page.screenshot(path=str(ROOT / "docs" / "ops-page.png"), full_page=True)  # the README's picture

    # Green once accounts' resolution has asked cards and released it.
    page.wait_for_selector("#risk[data-state=ok]", timeout=WAIT_MS)
    assert hold_id not in page.inner_text("#risk-row-stray_holds")
    with psycopg.connect(ops_bank.database_url, autocommit=True) as conn:
        status = conn.execute("SELECT status FROM accounts.holds WHERE id = %s", (hold_id,)).fetchone()
    assert status == ("released",)
    context.close()


def shed_row(page: Page, where: str, priority: str, reason: str) -> str:
    return f"#sheds tr.shed[data-where={where}][data-priority={priority}][data-reason={reason}]"


def gateway_app_sheds(ops_bank: RunningBank) -> tuple[int, int]:
    """(recent, since process start) of the gateway's app/limit sheds, as the summary has them."""
    rows = [
        r for r in ops_bank.summary()["sheds"]["rows"]
        if (r["where"], r["priority"], r["reason"]) == ("gateway", "app", "limit")
    ]  # fmt: skip
    return (rows[0]["recent"], rows[0]["since_start"]) if rows else (0, 0)


def concurrent_app_requests(ops_bank: RunningBank, n: int) -> list[httpx.Response]:
    """`n` app requests (accounts' public JWKS, through the gateway) sent at once."""
    start = threading.Barrier(n)
    answers: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=ops_bank.gateway, timeout=15) as http:
            start.wait()
            answers.append(http.get("/oauth2/jwks.json"))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_sheds_by_reason_and_consumer_lag_on_the_page(
    ops_bank: RunningBank, browser: Browser, artefacts: Path
) -> None:
    """Issue 24: requests refused past capacity are counted by reason on the page (from the services'
    shed counters), and every consumer's lag is shown. The bank's gateway admits one app request at a
    time (conftest), so app requests sent at once are shed with `503 service_unavailable.overloaded`."""
    context, page = ops_page(ops_bank, browser)
    page.wait_for_selector("#svc-gateway[data-state=up]", timeout=WAIT_MS)
    page.wait_for_selector("#sheds tr", timeout=WAIT_MS)
    recent_before, since_before = gateway_app_sheds(ops_bank)  # also a scrape before the sheds

    shed = 0
    for _ in range(50):  # rounds of 12 at once until some were shed (the first round, in practice)
        answers = concurrent_app_requests(ops_bank, 12)
        refused = [r for r in answers if r.status_code == 503]
        assert all(r.json()["code"] == "service_unavailable.overloaded" for r in refused)
        assert all(r.status_code in (200, 429, 503) for r in answers)
        shed += len(refused)
        if shed:
            break
    assert shed > 0

    row = shed_row(page, "gateway", "app", "limit")
    page.wait_for_function(
        f"(document.querySelector('{row} td.since') || {{}}).textContent === '{since_before + shed}'",
        timeout=WAIT_MS,
    )
    assert int(page.inner_text(f"{row} td.recent")) == recent_before + shed
    assert "refused past capacity" in page.inner_text("#sheds-note")

    # Consumer lag: a row per consumer and topic, the same figures as the summary; after an
    # authorisation's events are consumed, every lag on the page is back to 0.
    ops_bank.authorise(amount=275)
    page.wait_for_selector("#consumers tr.consumer", timeout=WAIT_MS)
    listed = ops_bank.summary()["consumers"]
    assert {"transactions", "webhooks", "notifications"} <= {c["service"] for c in listed}
    consumers = {(c["consumer"], c["topic"]) for c in listed}
    lags = "[...document.querySelectorAll('#consumers tr.consumer td.lag')]"
    page.wait_for_function(
        f"{lags}.length === {len(consumers)} && {lags}.every((td) => td.textContent === '0')",
        timeout=WAIT_MS,
    )
    shown = {
        (r.get_attribute("data-consumer"), r.get_attribute("data-topic"))
        for r in page.query_selector_all("#consumers tr.consumer")
    }
    assert shown == consumers
    page.screenshot(path=str(artefacts / "ops-sheds-and-lag.png"), full_page=True)
    context.close()


def database_totals(url: str) -> dict[str, Any]:
    """The business totals straight from the tables (written independently of ops/auditor.py)."""
    with psycopg.connect(url, autocommit=True) as conn:
        total, approved = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE response_code = '00') FROM cards.authorisations "
            "WHERE kind <> 'voided'"
        ).fetchone() or (0, 0)
        declines = {
            (reason or "OTHER", detail or ""): n
            for reason, detail, n in conn.execute(
                "SELECT decline_reason, decline_detail, count(*) FROM cards.authorisations "
                "WHERE status = 'declined' AND kind <> 'voided' GROUP BY 1, 2"
            )
        }
        topups = conn.execute("SELECT count(*) FROM accounts.journal_entries WHERE kind = 'topup'").fetchone()
    return {"total": total, "approved": approved, "declines": declines, "topups": topups[0] if topups else 0}


def page_declines(page: Page) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for row in page.query_selector_all("#declines tr.decline"):
        n = int(row.query_selector("td.n").inner_text())  # type: ignore[union-attr]
        found[(row.get_attribute("data-reason") or "", row.get_attribute("data-detail") or "")] = n
    return found


def cards_counter(ops_bank: RunningBank) -> float:
    """What cards' own process has counted since it started (what the page used to show)."""
    text = httpx.get(f"{ops_bank.url_of('cards')}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("card_authorisations_total{")
    )


def test_totals_survive_kill_9_of_cards_and_accounts_under_load(
    ops_bank: RunningBank, browser: Browser, artefacts: Path
) -> None:
    """kill -9 cards and accounts while authorisations arrive; `bank up` restarts them. The page's
    totals are the database's, not counters that began again from zero with the processes."""
    context, page = ops_page(ops_bank, browser)
    for name in ("cards", "accounts"):
        page.wait_for_selector(f"#svc-{name}[data-state=up]", timeout=WAIT_MS)
    for _ in range(3):
        ops_bank.authorise(amount=150)
    before = database_totals(ops_bank.database_url)["total"]

    stop = threading.Event()
    answers: dict[str, int] = {}

    def load() -> None:
        with httpx.Client(base_url=ops_bank.gateway, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post("/network/authorisations", json=message(ops_bank.card, 100),
                                  headers={"x-network-key": NETWORK_KEY})  # fmt: skip
                    key = (
                        r.json().get("response_code", str(r.status_code))
                        if r.status_code == 200
                        else str(r.status_code)
                    )
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                answers[key] = answers.get(key, 0) + 1

    senders = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in senders:
        t.start()
    try:
        time.sleep(2)
        killed = {}
        for name in ("cards", "accounts"):
            killed[name] = pid_listening_on(ops_bank.url_of(name))
            os.kill(killed[name], signal.SIGKILL)
            time.sleep(1)
        # `bank up` restarts them. The page polls every 2 s, so a restart quicker than that never
        # shows as down there (the webhooks test sees a service stay down): wait for new processes.
        for name in ("cards", "accounts"):
            wait_for_new_listener(ops_bank.url_of(name), killed[name], timeout=90)
        for name in ("cards", "accounts"):
            page.wait_for_selector(f"#svc-{name}[data-state=up]", timeout=90_000)
        time.sleep(3)  # some traffic after the restarts too
    finally:
        stop.set()
        for t in senders:
            t.join(timeout=30)
    print(f"\nanswers during the kills: {answers}")
    assert ops_bank.process.proc.poll() is None  # the bank itself stayed up

    truth = database_totals(ops_bank.database_url)
    assert truth["total"] > before
    page.wait_for_function(
        f"document.getElementById('auth-total').textContent === '{truth['total']}'", timeout=WAIT_MS
    )
    page.wait_for_function(  # the declines table is drawn from the same poll
        "document.querySelectorAll('#declines tr.decline').length > 0" if truth["declines"] else "true",
        timeout=WAIT_MS,
    )
    assert int(page.inner_text("#auth-total")) == truth["total"]
    assert page_declines(page) == truth["declines"]
    assert page.inner_text("#approval-rate") == f"{100 * truth['approved'] / truth['total']:.1f}%"
    assert page.inner_text("#biz-topups").startswith(f"{truth['topups']} (")
    # The restarted cards process has counted only what came after it started.
    assert cards_counter(ops_bank) < truth["total"]
    page.screenshot(path=str(artefacts / "ops-after-restarts.png"), full_page=True)
    context.close()
