"""The ops view of the bank's health: every service's /readyz, gathered by the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

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
