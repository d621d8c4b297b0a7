"""Direct dispatch of a service's hottest routes, past FastAPI's router (decision 0021).

A route named here stays an ordinary FastAPI route: it is declared, documented in OpenAPI and
tested as one. This layer, inside the request-context middleware (trace, deadline, metrics) and
outside everything else, sends its requests straight to the endpoint. That skips the router's
linear scan of every route, the exception and exit-stack middlewares and FastAPI's dependency
solving, about a millisecond of CPU per request on this service's hosts. Only routes shaped for
it qualify: an endpoint and dependencies that take just the `Request` and an endpoint that returns
a `Response`. Anything else is refused when the first request arrives, not served differently.
Errors go to the app's own exception handlers, so the answers are the ones FastAPI would give.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Call = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Target:
    route: Any  # what scope["route"] is set to: has the route's template as `path`
    dependencies: tuple[Call, ...]
    endpoint: Call


def _takes_only_the_request(dependant: Any) -> bool:
    return dependant.request_param_name is not None and not (
        dependant.path_params or dependant.query_params or dependant.header_params
        or dependant.cookie_params or dependant.body_params
    )  # fmt: skip


def _api_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every API route with its effective path, methods and dependencies. FastAPI ≥ 0.165 keeps an
    included router as one entry whose routes it combines with the inclusion on demand."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "effective_route_contexts"):
            yield from route.effective_route_contexts()


def _target(app: FastAPI, method: str, path: str) -> _Target:
    for route in _api_routes(app.routes):
        if route.path == path and method in (route.methods or ()):
            dependant = route.dependant
            subs = dependant.dependencies
            if not _takes_only_the_request(dependant) or not all(_takes_only_the_request(d) for d in subs):
                raise TypeError(f"{method} {path}: a direct route and its dependencies take only the Request")
            calls = tuple(d.call for d in subs if d.call is not None)
            return _Target(getattr(route, "original_route", route), calls, route.endpoint)
    raise LookupError(f"no route {method} {path} to serve directly")


async def _handled(app: FastAPI, request: Request, exc: Exception) -> Response:
    """The app's answer to `exc`: its handler for the nearest class, as ExceptionMiddleware picks."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            return await response if inspect.isawaitable(response) else response
    raise exc


class DirectRoutes:
    """ASGI middleware: `routes` are (method, path) pairs, exact (no path parameters)."""

    def __init__(self, app: ASGIApp, routes: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self._targets: dict[tuple[str, str], _Target] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = (scope.get("method", ""), scope.get("path", ""))
        if scope["type"] != "http" or key not in self.routes:
            await self.app(scope, receive, send)
            return
        app: FastAPI = scope["app"]
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _target(app, *key)
        scope["route"] = target.route  # what the request-context middleware labels metrics with
        request = Request(scope, receive, send)
        try:
            for dependency in target.dependencies:
                await dependency(request)
            response: Response = await target.endpoint(request)
        except Exception as exc:
            response = await _handled(app, request, exc)
        await response(scope, receive, send)
