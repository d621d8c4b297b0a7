"""/ops: the ops page and the JSON it polls. Every route needs the ops credential (ops/auth.py).

GET /ops                  the page (static/index.html: no build step, no external assets)
GET /ops/health           every service's readiness and the gateway's own state
GET /ops/api/summary      the dashboard's figures (ops/collector.py)
GET /ops/api/risk         the money-at-risk panel (ops/invariants.py, read by ops/auditor.py)
GET /ops/api/risk/{check} the items behind one of its rows: ids and ages
GET /ops/api/traces?q=    spans of the traces a trace id or any business id belongs to
GET /ops/api/recent       the newest authorisations' trace ids
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from services.gateway.ops.auditor import Auditor
from services.gateway.ops.auth import OpsCredential
from services.gateway.ops.collector import Collector
from services.gateway.ops.health import ServiceHealth
from services.gateway.ops.invariants import CHECK_NAMES
from services.gateway.ops.traces import TraceSearch
from shared.errors import BankError

STATIC = Path(__file__).with_name("static")


def router(
    health: ServiceHealth,
    gateway: Callable[[], dict[str, Any]] | None,
    *,
    credential: OpsCredential,
    collector: Collector,
    traces: TraceSearch,
    auditor: Auditor,
) -> APIRouter:
    """`gateway`, if given, reports the gateway's own state (circuits, token keys, rate-limit buckets)."""
    api = APIRouter(prefix="/ops", tags=["ops"], dependencies=[Depends(credential)])
    page = (STATIC / "index.html").read_text()

    @api.get("/health")
    async def health_json() -> dict[str, Any]:
        """Every service's readiness, as the gateway sees it, and the gateway's own state."""
        services = await health.all()
        body: dict[str, Any] = {"ok": all(s["ok"] for s in services.values()), "services": services}
        if gateway is not None:
            body["gateway"] = gateway()
        return body

    @api.get("", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @api.get("/api/summary", include_in_schema=False)
    async def summary() -> dict[str, Any]:
        return await collector.summary()

    @api.get("/api/risk", include_in_schema=False)
    async def risk() -> dict[str, Any]:
        return (await auditor.risk()).to_dict()

    @api.get("/api/risk/{check}", include_in_schema=False)
    async def risk_items(check: str) -> dict[str, Any]:
        if check not in CHECK_NAMES:
            raise BankError("not_found.check", f"no such check; the checks are {', '.join(CHECK_NAMES)}")
        snapshot = await auditor.risk()
        if snapshot.error is not None:
            return {"check": check, "error": snapshot.error, "items": []}
        [found] = [c for c in snapshot.to_dict()["checks"] if c["name"] == check]
        return {"check": check, "time": snapshot.at, "listed": len(found["items"]), **found}

    @api.get("/api/traces", include_in_schema=False)
    async def search(q: str = Query(min_length=1, max_length=200)) -> dict[str, Any]:
        return await traces.search(q)

    @api.get("/api/recent", include_in_schema=False)
    async def recent(limit: int = Query(default=15, ge=1, le=50)) -> dict[str, Any]:
        return {"authorisations": traces.recent_authorisations(limit)}

    return api
