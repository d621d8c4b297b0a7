"""Trace search for the ops page: every service's span ring (`/internal/spans`), merged.

The embedded span store is one in-memory ring per process (shared.tracing, decision 0015), so a
search asks each service at once and puts the answers together; the gateway's own ring is read in
process. A service that is down contributes nothing and is named in `unavailable`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared import tracing
from shared.errors import BankError
from shared.http import ServiceClient

AUTHORISATION_PATH = "/network/authorisations"


class TraceSearch:
    def __init__(self, clients: dict[str, ServiceClient], internal_token: str) -> None:
        self.clients = clients
        self.headers = {"x-internal-token": internal_token}

    async def _ask(self, name: str, params: dict[str, str]) -> list[dict[str, Any]] | None:
        try:
            resp = await self.clients[name].get("/internal/spans", params=params, headers=self.headers)
        except BankError:
            return None
        if resp.status_code != 200:
            return None
        return list(resp.json().get("spans", []))

    async def search(self, query: str) -> dict[str, Any]:
        """By trace id (32 hex digits) or by any id a span carries (transaction, authorisation,
        network transaction, account, event id...)."""
        query = query.strip()
        params = {"trace_id": query.lower()} if tracing.is_trace_id(query.lower()) else {"q": query}
        local = (
            tracing.RING.find(trace_id=params.get("trace_id"), search=params.get("q"))
            if tracing.enabled()
            else []
        )
        names = list(self.clients)
        answers = await asyncio.gather(*(self._ask(n, params) for n in names))
        spans = list(local)
        unavailable = []
        for name, found in zip(names, answers, strict=True):
            if found is None:
                unavailable.append(name)
            else:
                spans.extend(found)
        seen: set[tuple[str, str]] = set()
        unique = []
        for s in spans:  # in-process test banks serve one ring from several apps
            key = (s["trace_id"], s["span_id"])
            if key not in seen:
                seen.add(key)
                unique.append(s)
        unique.sort(key=lambda s: (s["start_us"], s["end_us"]))
        traces = sorted({s["trace_id"] for s in unique})
        return {
            "query": query,
            "traces": traces,
            "spans": unique,
            "services": sorted({s["service"] for s in unique}),
            "unavailable": unavailable,
        }

    @staticmethod
    def recent_authorisations(limit: int = 15) -> list[dict[str, Any]]:
        """The newest authorisations the gateway forwarded (its own server spans), newest first."""
        if not tracing.enabled():
            return []
        return [
            {
                "trace_id": s["trace_id"],
                "start_us": s["start_us"],
                "duration_ms": round((s["end_us"] - s["start_us"]) / 1000, 2),
                "status": s["attributes"].get("http.response.status_code"),
            }
            for s in tracing.RING.recent(AUTHORISATION_PATH, limit * 3)
            if s["service"] == "gateway" and s["kind"] == "server"
        ][:limit]
