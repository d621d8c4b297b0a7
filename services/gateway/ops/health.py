"""The ops view of the bank's health: every service's /readyz, gathered by the gateway."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from shared.config import SERVICES, BankSettings
from shared.errors import BankError
from shared.http import ServiceClient


class ServiceHealth:
    def __init__(self, settings: BankSettings) -> None:
        self.clients = {
            name: ServiceClient(name, settings.url_of(name), timeout=1.5, retries=0)
            for name in SERVICES
            if name != "gateway"
        }

    async def one(self, name: str) -> dict[str, Any]:
        try:
            resp = await self.clients[name].get("/readyz")
        except BankError as exc:
            return {"ok": False, "error": exc.message}
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        return {"ok": resp.status_code == 200, "checks": body.get("checks", {})}

    async def all(self) -> dict[str, dict[str, Any]]:
        names = list(self.clients)
        results = await asyncio.gather(*(self.one(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def router(health: ServiceHealth, gateway: Callable[[], dict[str, Any]] | None = None) -> APIRouter:
    """`gateway`, if given, reports the gateway's own state (circuits, token keys, rate-limit buckets)."""
    api = APIRouter(prefix="/ops", tags=["ops"])

    @api.get("/health")
    async def health_json() -> dict[str, Any]:
        """Every service's readiness, as the gateway sees it, and the gateway's own state."""
        services = await health.all()
        body: dict[str, Any] = {"ok": all(s["ok"] for s in services.values()), "services": services}
        if gateway is not None:
            body["gateway"] = gateway()
        return body

    @api.get("", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        services = await health.all()
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td class={'ok' if s['ok'] else 'down'}>"
            f"{'ready' if s['ok'] else 'DOWN'}</td><td>{html.escape(_summary(s))}</td></tr>"
            for name, s in services.items()
        )
        circuits = ", ".join(
            f"{n}: {s}" for n, s in (gateway() if gateway else {}).get("circuits", {}).items()
        )
        return _PAGE.format(rows=rows, circuits=html.escape(circuits or "n/a"))

    return api


def _summary(service: dict[str, Any]) -> str:
    if "error" in service:
        return str(service["error"])
    return "; ".join(
        f"{check}: {'ok' if detail.get('ok') else detail.get('error', 'failed')}"
        for check, detail in service.get("checks", {}).items()
    )


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>bank ops</title>
<meta http-equiv="refresh" content="5">
<style>body{{font:14px system-ui;margin:2em}}td,th{{padding:.3em 1em;text-align:left}}
.ok{{color:#0a0}}.down{{color:#c00;font-weight:bold}}</style></head>
<body><h1>Bank operations</h1><table><tr><th>service</th><th>state</th><th>checks</th></tr>{rows}</table>
<p>gateway circuits: {circuits}</p>
<p>JSON: <a href="/ops/health">/ops/health</a> · metrics: <a href="/metrics">/metrics</a></p></body></html>"""
