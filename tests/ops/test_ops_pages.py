"""/ops through the gateway's own pipeline (in process): the credential, the page, the figures.

The upstream services are not running here, so every one of them must show as down, and the
trace search must name them as not answering rather than fail.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from bank.infra.ports import free_port
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.shedding import Shedder
from shared.config import SERVICES, BankSettings
from shared.errors import BankError

TOKEN = "ops-test-token"


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    urls = {f"{name}_url": f"http://127.0.0.1:{free_port()}" for name in SERVICES}
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/bank"  # no database either
    app = create_app(
        BankSettings(database_url=nowhere, **urls), GatewaySettings(ops_token=TOKEN, ops_scrape_seconds=0.1)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http
    await app.state.gateway.close()


async def test_unauthenticated_ops_is_refused_with_a_typed_401(client: httpx.AsyncClient) -> None:
    for path in (
        "/ops", "/ops/health", "/ops/api/summary", "/ops/api/traces?q=x", "/ops/api/recent", "/ops/api/risk",
        "/ops/api/risk/stray_holds",
    ):  # fmt: skip
        r = await client.get(path)
        assert r.status_code == 401, path
        assert r.json()["code"] == "unauthorized.ops_credential", path
        assert r.headers["www-authenticate"].startswith("Basic realm="), path
        wrong = await client.get(path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized.ops_credential"


async def test_the_page_and_its_figures_with_the_credential(client: httpx.AsyncClient) -> None:
    basic = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    page = await client.get("/ops", headers={"Authorization": basic})
    assert page.status_code == 200 and "<h1>Bank operations</h1>" in page.text
    assert "http://" not in page.text.split("<script>")[1]  # nothing fetched from elsewhere

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    summary = (await client.get("/ops/api/summary", headers=bearer)).json()
    assert summary["services"]["gateway"]["ok"] is True
    down = {name for name, s in summary["services"].items() if not s["ok"]}
    assert down == set(SERVICES) - {"gateway"}  # nothing else is running in this test
    # Figures only: this test process's metrics registry is shared with every other test's services.
    assert {"total", "approval_rate"} <= set(summary["authorisations"])
    assert set(summary["latency"]) == {"cards", "gateway"}
    assert summary["gateway"]["circuits"]

    found = (await client.get("/ops/api/traces", params={"q": "0" * 31 + "1"}, headers=bearer)).json()
    assert found["spans"] == [] and set(found["unavailable"]) == set(SERVICES) - {"gateway"}
    assert isinstance((await client.get("/ops/api/recent", headers=bearer)).json()["authorisations"], list)
    assert (await client.get("/ops/health", headers=bearer)).json()["ok"] is False


async def test_without_a_database_totals_and_money_at_risk_are_unknown_not_zero(
    client: httpx.AsyncClient,
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    summary = (await client.get("/ops/api/summary", headers=bearer)).json()
    assert summary["authorisations"]["total"] is None and "cannot read" in summary["totals_error"]
    assert summary["risk"]["ok"] is False and "cannot read" in summary["risk"]["error"]
    risk = (await client.get("/ops/api/risk", headers=bearer)).json()
    assert risk["ok"] is False and risk["error"]
    items = await client.get("/ops/api/risk/stray_holds", headers=bearer)
    assert items.status_code == 200 and items.json()["items"] == [] and items.json()["error"]
    unknown = await client.get("/ops/api/risk/no_such_check", headers=bearer)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found.check"


def gateway_app_sheds(summary: dict[str, Any]) -> int:
    rows = [
        r
        for r in summary["sheds"]["rows"]
        if (r["where"], r["priority"], r["reason"]) == ("gateway", "app", "limit")
    ]
    return int(rows[0]["since_start"]) if rows else 0


async def test_sheds_by_reason_and_consumer_lag_are_in_the_figures(client: httpx.AsyncClient) -> None:
    """Issue 24: the page's figures carry sheds by reason (the gateway's own counter, read from its
    registry; cards is not running here, so it is named as not scraped) and consumer lag."""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    page = (await client.get("/ops", headers={"Authorization": f"Bearer {TOKEN}"})).text
    for element in ('id="sheds"', 'id="sheds-note"', 'id="consumers"'):
        assert element in page
    summary = (await client.get("/ops/api/summary", headers=bearer)).json()
    assert summary["sheds"]["scraped"] == {"gateway": True, "cards": False}
    assert isinstance(summary["consumers"], list)  # lag per consumer and topic (none run here)
    before = gateway_app_sheds(summary)

    shedder = Shedder(app_limit=1)  # a real admission: one app request in flight, three more refused
    shedder.admit("app")
    for _ in range(3):
        with pytest.raises(BankError) as refused:
            shedder.admit("app")
        assert refused.value.code == "service_unavailable.overloaded"
    for _ in range(200):  # the collector scrapes at most every 0.1 s: ask until it has
        summary = (await client.get("/ops/api/summary", headers=bearer)).json()
        if gateway_app_sheds(summary) != before:
            break
        await asyncio.sleep(0.05)
    assert gateway_app_sheds(summary) == before + 3
