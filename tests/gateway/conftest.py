"""The gateway over real sockets, in front of small but real upstream services.

Every upstream is a FastAPI app built with shared.web.create_app (so it sees and
answers traceparent and x-deadline-ms like the bank's services) on its own
uvicorn server: it echoes what it received, and has a few documented routes for
the OpenAPI merge. The fake accounts also serves what the gateway needs from the
real one: `GET /oauth2/jwks.json` and `GET /oauth2/revocations?since=`, from a
SigningKey generated here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest_asyncio
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from bank.infra.ports import free_port
from services.gateway.app import create_app as create_gateway_app
from services.gateway.config import GatewaySettings, RateLimit
from services.gateway.routes import RouteTable, parse_table
from shared.config import SERVICES, BankSettings
from shared.web import create_app
from tests.support.accounts import StubAccounts
from tests.support.serving import Served
from tests.support.waiting import eventually

INTERNAL_TOKEN = "test-internal-token"
NETWORK_KEY = "test-network-key"
UPSTREAMS = ("accounts", "cards", "transactions", "webhooks", "notifications")


# ---------------------------------------------------------------- servers


# proxy_headers=False: the test client is not a trusted load balancer, so an X-Forwarded-For it
# sends must not become the client address (uvicorn trusts 127.0.0.1 by default).
SERVING: dict[str, Any] = {"proxy_headers": False, "log_level": "warning"}


# ---------------------------------------------------------------- fake upstreams


@dataclass
class UpstreamState:
    name: str
    fail: bool = False  # /flaky answers 500 while set
    seen: list[dict[str, Any]] = field(default_factory=list)


class AccountsModel(BaseModel):  # the same name as cards' below, a different shape
    id: str
    balance: int


class CardsModel(BaseModel):
    id: str
    last4: str


async def echo(request: Request, state: UpstreamState) -> JSONResponse:
    body = await request.body()
    seen = {
        "service": state.name,
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.scope.get("query_string", b"").decode("latin-1"),
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]},
        "body": body.decode("latin-1"),
        "body_length": len(body),
    }
    state.seen.append(seen)
    return JSONResponse(seen, headers={"x-upstream": state.name})


def upstream_app(state: UpstreamState, extra: APIRouter | None = None) -> FastAPI:
    documented = APIRouter()

    async def run_echo(request: Request) -> JSONResponse:
        return await echo(request, state)

    if state.name == "accounts":

        @documented.get("/accounts", response_model=list[AccountsModel])
        async def list_accounts(request: Request) -> JSONResponse:
            return await echo(request, state)

        @documented.get("/internal/accounts/{account_id}")
        async def internal_account(account_id: str, request: Request) -> JSONResponse:
            return await echo(request, state)

        @documented.get("/unrouted")
        async def unrouted(request: Request) -> JSONResponse:
            return await echo(request, state)

    if state.name == "cards":

        @documented.get("/cards", response_model=list[CardsModel])
        async def list_cards(request: Request) -> JSONResponse:
            return await echo(request, state)

        @documented.post("/network/authorisations")
        async def authorise(request: Request) -> JSONResponse:
            return await echo(request, state)

    other = APIRouter()

    @other.api_route("/slow", methods=["GET", "POST"], include_in_schema=False)
    async def slow(request: Request, ms: int = 0) -> JSONResponse:
        await asyncio.sleep(ms / 1000)
        return await echo(request, state)

    @other.get("/flaky", include_in_schema=False)
    async def flaky(request: Request) -> Response:
        if state.fail:
            return Response("upstream bug", status_code=500)
        return await echo(request, state)

    @other.get("/odd-headers", include_in_schema=False)
    async def odd_headers() -> Response:
        response = Response("{}", media_type="application/json")
        response.headers["x-upstream"] = state.name
        response.headers["keep-alive"] = "timeout=99"
        response.headers["proxy-agent"] = "inner"
        response.headers.append("set-cookie", "a=1; Path=/")
        response.headers.append("set-cookie", "b=2; Path=/")
        return response

    @other.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    async def anything(request: Request) -> JSONResponse:
        return await run_echo(request)

    routers = [documented, *([extra] if extra else []), other]
    return create_app(state.name, routers=routers)


@dataclass
class Upstreams:
    servers: dict[str, Served]
    states: dict[str, UpstreamState]
    accounts: StubAccounts  # what the gateway reads from accounts: its public keys and revocations

    def url(self, name: str) -> str:
        return self.servers[name].url

    def last(self, name: str) -> dict[str, Any]:
        return self.states[name].seen[-1]


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def upstreams() -> AsyncIterator[Upstreams]:
    accounts = StubAccounts()
    states = {name: UpstreamState(name) for name in UPSTREAMS}
    servers = {
        name: await Served(
            upstream_app(states[name], accounts.identity_router() if name == "accounts" else None), **SERVING
        ).start()
        for name in UPSTREAMS
    }
    yield Upstreams(servers, states, accounts)
    for server in servers.values():
        await server.stop()


# ---------------------------------------------------------------- gateways


def bank_settings(upstreams: Upstreams, **overrides: str) -> BankSettings:
    urls = {f"{name}_url": upstreams.url(name) for name in UPSTREAMS}
    urls.update(overrides)
    return BankSettings(internal_token=INTERNAL_TOKEN, log_json=False, **urls)  # type: ignore[arg-type]


def gateway_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "network_api_key": NETWORK_KEY,
        "rate_limits": {
            name: RateLimit(rate=10_000, burst=10_000) for name in ("default", "auth", "network", "ops")
        },
        "jwks_min_refresh_seconds": 0.5,
        "jwks_refresh_seconds": 300.0,
        "revocation_poll_seconds": 0.1,
        "breaker_reset_seconds": 0.5,
        "openapi_cache_seconds": 0.0,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@dataclass
class Gateway:
    url: str
    app: FastAPI
    server: Served

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kw)


async def start_gateway(
    settings: BankSettings, config: GatewaySettings, table: RouteTable | None = None
) -> Gateway:
    app = create_gateway_app(settings, config, table)
    server = await Served(app, **SERVING).start()
    return Gateway(server.url, app, server)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def gateway(upstreams: Upstreams) -> AsyncIterator[Gateway]:
    """The gateway with the real routes.toml."""
    gw = await start_gateway(bank_settings(upstreams), gateway_settings())
    await eventually(lambda: gw.app.state.gateway.keys.loaded_at is not None)
    yield gw
    await gw.server.stop()


LAB_ROUTES = """
[defaults]
timeout = 2.0
rate_limit = "none"

[[route]]
prefix = "/slow"
methods = ["GET"]
upstream = "transactions"
auth = "none"
timeout = 0.3

[[route]]
prefix = "/flaky"
methods = ["GET"]
upstream = "webhooks"
auth = "none"

[[route]]
prefix = "/down"
methods = ["GET"]
upstream = "notifications"
auth = "none"

[[route]]
prefix = "/limited"
methods = ["GET"]
upstream = "cards"
auth = "none"
rate_limit = "tight"

[[route]]
prefix = "/limited-user"
methods = ["GET"]
upstream = "cards"
auth = "user"
rate_limit = "tight"

[[route]]
prefix = "/upload"
methods = ["POST"]
upstream = "cards"
auth = "none"

[[route]]
prefix = "/odd-headers"
methods = ["GET"]
upstream = "cards"
auth = "none"

[[route]]
prefix = "/lp"
methods = ["GET"]
upstream = "cards"
auth = "none"

[[route]]
prefix = "/lp/private"
methods = ["GET"]
upstream = "cards"
auth = "user"

[[route]]
prefix = "/lp/deep"
methods = ["POST"]
upstream = "transactions"
auth = "none"

[[route]]
prefix = "/accounts"
methods = ["GET"]
upstream = "accounts"
auth = "user"

[[route]]
prefix = "/openapi.json"
methods = ["GET"]
upstream = "gateway"
auth = "none"
"""


def lab_table(config: GatewaySettings) -> RouteTable:
    return parse_table(LAB_ROUTES, upstreams=SERVICES, rate_limits=config.rate_limits, source="lab")


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def lab(upstreams: Upstreams) -> AsyncIterator[Gateway]:
    """A gateway with a test route table: a slow route, a flaky and a dead upstream, tight limits,
    a 1 KiB body limit, no retries (so failures are counted one per request)."""
    config = gateway_settings(
        max_body_bytes=1024,
        rate_limits={"tight": RateLimit(rate=0.5, burst=2)},
        breaker_failures=3,
        breaker_reset_seconds=1.0,
        upstream_retries=0,
    )
    settings = bank_settings(upstreams, notifications_url=f"http://127.0.0.1:{free_port()}")
    gw = await start_gateway(settings, config, lab_table(config))
    await eventually(lambda: gw.app.state.gateway.keys.loaded_at is not None)
    yield gw
    await gw.server.stop()
