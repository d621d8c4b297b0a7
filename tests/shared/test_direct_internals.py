"""What shared/direct.py reads of FastAPI's and Starlette's internals, checked one by one.

direct.py (decision 0021) finds a route's endpoint and dependencies in FastAPI's route table and
calls them itself. None of what it reads is public API, so a FastAPI release may move it without
notice. These tests name each thing it reads; when one fails after an upgrade, direct.py must be
brought up to date (or the upgrade held back) before the pin in pyproject.toml is moved.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from shared.direct import _api_routes, _target

# The versions direct.py was written and measured against: pyproject.toml pins these ranges.
FASTAPI = (0, 165)
STARLETTE = (1, 10)

# Every kind of parameter a FastAPI Dependant can ask for, as lists of fields. direct.py refuses
# a route with any of them; a new kind would be served by direct.py without being filled in.
PARAMETER_LISTS = {"path_params", "query_params", "header_params", "cookie_params", "body_params"}


def _minor(package: str) -> tuple[int, int]:
    major, minor = importlib.metadata.version(package).split(".")[:2]
    return int(major), int(minor)


def test_fastapi_and_starlette_are_the_versions_direct_py_reads() -> None:
    assert _minor("fastapi") == FASTAPI, (
        f"FastAPI {importlib.metadata.version('fastapi')} is installed; shared/direct.py reads FastAPI "
        f"{FASTAPI[0]}.{FASTAPI[1]}'s internals. Check every test in this file, then move FASTAPI "
        "here and the pin."
    )
    assert _minor("starlette") == STARLETTE, (
        f"Starlette {importlib.metadata.version('starlette')} is installed; shared/direct.py was checked "
        f"against {STARLETTE[0]}.{STARLETTE[1]}. Check every test in this file, then move STARLETTE "
        "here and the pin."
    )


def test_a_dependant_has_the_fields_direct_py_reads_and_no_new_kind_of_parameter() -> None:
    fields = {f.name for f in dataclasses.fields(Dependant)}
    assert {"request_param_name", "dependencies", "call", *PARAMETER_LISTS} <= fields
    lists = {name for name in fields if name.endswith("_params")}
    assert lists == PARAMETER_LISTS, (
        f"FastAPI's Dependant has new kinds of parameter: {lists - PARAMETER_LISTS}"
    )


async def _dependency(request: Request) -> None:
    return None


def _app() -> tuple[FastAPI, object]:
    router = APIRouter(dependencies=[Depends(_dependency)])

    @router.post("/pay")
    async def pay(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    return app, pay


def test_an_included_routers_routes_are_found_with_their_full_path_and_dependencies() -> None:
    app, pay = _app()
    routes = [route for route in _api_routes(app.routes) if route.path == "/v1/pay"]
    assert len(routes) == 1, (
        "FastAPI no longer lists an included router's routes the way direct.py walks them"
    )
    route = routes[0]
    assert route.methods == {"POST"}
    assert route.endpoint is pay
    assert route.dependant.request_param_name == "request"
    assert [d.call for d in route.dependant.dependencies] == [_dependency]
    # What scope["route"] is set to: an APIRoute with the route's template, as the router sets it.
    original = getattr(route, "original_route", route)
    assert isinstance(original, APIRoute)


def test_the_target_is_the_endpoint_and_its_dependencies() -> None:
    app, pay = _app()
    target = _target(app, "POST", "/v1/pay")
    assert target.endpoint is pay
    assert target.dependencies == (_dependency,)
    assert isinstance(target.route, APIRoute)


def test_exception_handlers_are_a_mapping_from_exception_classes() -> None:
    app = FastAPI()

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({}, status_code=418)

    app.add_exception_handler(KeyError, handler)
    assert app.exception_handlers[KeyError] is handler


@pytest.mark.parametrize("name", ["routes", "exception_handlers"])
def test_the_app_attributes_direct_py_reads(name: str) -> None:
    assert hasattr(FastAPI(), name)
