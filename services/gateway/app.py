"""The gateway: the bank's one front door (routing, identity, limits, tracing, /ops, /docs).

The gateway keeps no state: it runs on the bare app factory, without a database or an event
transport, so its readiness depends only on what it needs to route (the token keys), not on
PostgreSQL or Kafka being up. (The ops page reads totals and money at risk on one read-only
connection of its own, ops/auditor.py, decision 0038; readiness never waits for it.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.middleware import Middleware

from services.gateway.config import DEV_NETWORK_KEY, DEV_OPS_TOKEN, GatewaySettings
from services.gateway.edge import AccessLog, EdgeRouter
from services.gateway.identity import EdgeIdentity
from services.gateway.limits import RateLimiter
from services.gateway.openapi import ApiDocs
from services.gateway.ops import health, pages
from services.gateway.ops.auditor import Auditor
from services.gateway.ops.auth import OpsCredential
from services.gateway.ops.collector import Collector
from services.gateway.ops.traces import TraceSearch
from services.gateway.proxy import Proxy, upstream_client
from services.gateway.routes import RouteTable, RouteTableError, parse_table
from services.gateway.shedding import Shedder
from shared.config import SERVICES, BankSettings, load
from shared.remote_auth import KeySet, RevocationList, identity_client
from shared.web import create_app as create_web_app

log = logging.getLogger("gateway")


def load_table(config: GatewaySettings, path: Path | None = None) -> RouteTable:
    """The route table file, validated; start-up stops with a message naming each bad route."""
    path = path or config.routes_file
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"cannot read the route table {path}: {exc.strerror}") from None
    try:
        return parse_table(text, upstreams=SERVICES, rate_limits=config.rate_limits, source=str(path))
    except RouteTableError as exc:
        raise SystemExit(str(exc)) from None


class Gateway:
    """Everything the gateway is made of, to be mounted on an app (`install`)."""

    def __init__(
        self, settings: BankSettings, config: GatewaySettings, table: RouteTable | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.table = table or load_table(config)
        self.clients = {
            name: upstream_client(name, settings.url_of(name), config)
            for name in sorted(self.table.upstreams())
        }
        # Its own pool: token keys keep refreshing whatever the API traffic does to accounts.
        self.accounts = identity_client(settings.url_of("accounts"))
        self.keys = KeySet(
            self.accounts,
            min_refresh_seconds=config.jwks_min_refresh_seconds,
            refresh_seconds=config.jwks_refresh_seconds,
        )
        self.revocations = RevocationList(self.accounts, poll_seconds=config.revocation_poll_seconds)
        self.identity = EdgeIdentity(self.keys, self.revocations, config.network_api_key)
        self.limiter = RateLimiter(
            {name: (limit.rate, limit.burst) for name, limit in config.rate_limits.items()},
            max_keys=config.rate_limit_max_keys,
        )
        self.proxy = Proxy(self.clients, settings.internal_token)
        self.docs = ApiDocs(self.table, self.clients, cache_seconds=config.openapi_cache_seconds)
        self.health = health.ServiceHealth(settings)
        self.ops_credential = OpsCredential(config.ops_token)
        self.auditor = Auditor(settings.database_url)  # read-only, for /ops only (decision 0038)
        self.collector = Collector(
            self.health,
            settings.internal_token,
            self.status,
            auditor=self.auditor,
            min_interval=config.ops_scrape_seconds,
        )
        self.traces = TraceSearch(self.health.clients, settings.internal_token)
        if config.network_api_key == DEV_NETWORK_KEY:
            log.warning("GATEWAY_NETWORK_API_KEY is the development default; set it outside development")
        if config.ops_token == DEV_OPS_TOKEN:
            log.warning("GATEWAY_OPS_TOKEN is the development default; set it outside development")

    def status(self) -> dict[str, Any]:
        return {
            "circuits": {name: client.breaker.state for name, client in self.clients.items()},
            "identity": {**self.keys.details(), **self.revocations.details()},
            "rate_limit_buckets": self.limiter.sizes(),
        }

    def app_parts(self) -> dict[str, Any]:
        """Keyword arguments for Runtime.app / shared.web.create_app."""
        return {
            "routers": [self._ops_router(), self._docs_router()],
            "checkers": {"identity": self.identity.checker()},
            "background": [self.keys.run, self.revocations.run, self.auditor.run],
            "on_shutdown": [self.close],
            "title": "bank gateway",
            # The gateway serves the merged document of the whole API instead of its own.
            "docs_url": None,
            "redoc_url": None,
            "openapi_url": None,
        }

    def install(self, app: FastAPI) -> FastAPI:
        """Put the pipeline around the app: AccessLog outermost, EdgeRouter inside the request context."""
        router = Middleware(
            EdgeRouter,
            table=self.table,
            identity=self.identity,
            limiter=self.limiter,
            proxy=self.proxy,
            max_body_bytes=self.config.max_body_bytes,
            shedder=Shedder(app_limit=self.config.app_in_flight_limit),
        )
        app.user_middleware.append(router)  # innermost of the user middleware: after RequestContext
        app.add_middleware(AccessLog)  # outermost
        app.router.redirect_slashes = False  # paths are the upstreams' business, not rewritten here
        self.docs.local = app.openapi
        app.state.gateway = self
        return app

    def _ops_router(self) -> APIRouter:
        return pages.router(
            self.health,
            self.status,
            credential=self.ops_credential,
            collector=self.collector,
            traces=self.traces,
            auditor=self.auditor,
        )

    def _docs_router(self) -> APIRouter:
        api = APIRouter()

        @api.get("/openapi.json", include_in_schema=False)
        async def openapi() -> dict[str, Any]:
            return await self.docs.document()

        @api.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="Bank API")

        return api

    async def close(self) -> None:
        for client in [*self.clients.values(), self.accounts]:
            await client.aclose()
        await self.health.close()
        await self.auditor.close()


def create_app(
    settings: BankSettings | None = None,
    config: GatewaySettings | None = None,
    table: RouteTable | None = None,
) -> FastAPI:
    gateway = Gateway(settings or load(BankSettings), config or load(GatewaySettings), table)
    return gateway.install(create_web_app("gateway", **gateway.app_parts()))
