"""Direct routes over a real socket: served past FastAPI's router, with FastAPI's answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter as FastAPIRouter
from pydantic import BaseModel, Field

from shared.direct import _target
from shared.errors import BankError
from shared.observability import HTTP_REQUESTS
from shared.web import create_app, read_model
from tests.support.serving import Served


class Payment(BaseModel):
    amount: int = Field(gt=0)


async def require_key(request: Request) -> None:
    if request.headers.get("x-key") != "right":
        raise BankError("unauthorized.key", "wrong key")


router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/pay")
async def pay(request: Request) -> JSONResponse:
    body = await read_model(request, Payment)
    if body.amount == 13:
        raise BankError("unprocessable.unlucky", "not that amount")
    if body.amount == 99:
        raise RuntimeError("a bug")
    return JSONResponse({"paid": body.amount, "route": request.scope["route"].path})


@router.post("/slow")
async def slow(request: Request) -> JSONResponse:
    return JSONResponse({"direct": False})


routed: list[str] = []
watched: set[int] = set()  # the routers of this module's apps: others in the process are not counted


@pytest_asyncio.fixture(loop_scope="session")
async def base_url(count_routed: Any) -> AsyncIterator[str]:
    app = create_app("direct-test", routers=[router], direct_routes=[("POST", "/pay")])
    watched.add(id(app.router))
    async with Served(app) as served:
        yield served.url


@pytest.fixture(scope="session")
def count_routed() -> Any:
    """Counts the requests that reach FastAPI's router."""
    original = FastAPIRouter.__call__

    async def counting(self: FastAPIRouter, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and id(self) in watched:
            routed.append(scope["path"])
        await original(self, scope, receive, send)

    FastAPIRouter.__call__ = counting  # type: ignore[method-assign,assignment]
    yield
    FastAPIRouter.__call__ = original  # type: ignore[method-assign]


async def test_a_direct_route_answers_without_the_router(base_url: str) -> None:
    routed.clear()
    async with httpx.AsyncClient(base_url=base_url, headers={"x-key": "right"}) as client:
        paid = await client.post("/pay", json={"amount": 250})
        other = await client.post("/slow")
    assert paid.status_code == 200 and paid.json() == {"paid": 250, "route": "/pay"}
    assert other.status_code == 200
    assert routed == ["/slow"]  # only the route not named direct went through the router
    samples = {
        tuple(s.labels.values()): s.value
        for metric in HTTP_REQUESTS.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert samples[("direct-test", "POST", "/pay", "200")] >= 1  # labelled by the route's template


async def test_dependencies_and_errors_give_the_apps_answers(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"x-key": "right"}) as client:
        no_key = await client.post("/pay", json={"amount": 1}, headers={"x-key": "wrong"})
        bad = await client.post("/pay", json={"amount": -5})
        missing = await client.post("/pay", json={})
        not_json = await client.post("/pay", content=b"{nope")
        refused = await client.post("/pay", json={"amount": 13})
        bug = await client.post("/pay", json={"amount": 99})
    assert (no_key.status_code, no_key.json()["code"]) == (401, "unauthorized.key")
    assert (bad.status_code, bad.json()["code"]) == (400, "bad_request.bad_param")
    assert bad.json()["params"] == {"param": "amount"}
    assert (missing.status_code, missing.json()["code"]) == (400, "bad_request.missing_param")
    assert (not_json.status_code, not_json.json()["code"]) == (400, "bad_request.malformed_message")
    assert (refused.status_code, refused.json()["code"]) == (422, "unprocessable.unlucky")
    assert (bug.status_code, bug.json()["code"]) == (500, "internal.error")


def test_only_routes_that_take_just_the_request_qualify() -> None:
    app = FastAPI()

    @app.post("/typed")
    async def typed(body: Payment) -> dict[str, int]:
        return {"paid": body.amount}

    @app.post("/plain")
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(TypeError):
        _target(app, "POST", "/typed")
    with pytest.raises(LookupError):
        _target(app, "GET", "/plain")
    assert _target(app, "POST", "/plain").endpoint is plain
