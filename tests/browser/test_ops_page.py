"""The ops page in headless Chromium against a running bank, and one trace across the services.

Waiting is on the thing awaited (Playwright's wait_for_* polling the page; the event log's NOTIFY),
never on a clock; the timeouts only bound how long a failure takes to report.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser.conftest import OPS_TOKEN, RunningBank

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
