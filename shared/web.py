"""The app factory every service uses: error mapping, tracing, deadlines, metrics, health.

Middleware is plain ASGI (not BaseHTTPMiddleware) because it sits on the card
authorisation hot path and must add microseconds, not milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import context, tracing
from shared.direct import DirectRoutes
from shared.errors import BankError
from shared.health import Checker, run_checkers
from shared.observability import HTTP_LATENCY, HTTP_REQUESTS, log_fields

log = logging.getLogger("shared.web")

M = TypeVar("M", bound=BaseModel)
Background = Callable[[], Coroutine[Any, Any, None]]
Hook = Callable[[], Awaitable[None]]

_UNMETERED = frozenset({"/metrics", "/healthz", "/readyz"})
# Not traced either: probes, and the ops page's own polling (it would fill the span store with itself).
_UNTRACED = frozenset({*_UNMETERED, "/internal/spans", "/internal/dead-letters"})
_UNTRACED_PREFIX = "/ops"
_CONNECTION_LOST: tuple[type[Exception], ...] = (
    ConnectionError,
    socket.gaierror,  # the database's host name did not resolve (a DNS blip in a cluster)
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # the server is shutting down or starting up
    asyncpg.InterfaceError,  # e.g. the connection was closed under a statement
)


class RequestContextMiddleware:
    """Sets the trace context and deadline for the request, and records metrics."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        parent = context.TraceContext.parse(_header(headers, b"traceparent"))
        span = None
        if not tracing.enabled():
            trace = parent.child() if parent else context.TraceContext.new()
            context.set_trace(trace)
        elif scope["path"] in _UNTRACED or scope["path"].startswith(_UNTRACED_PREFIX):
            trace = tracing.unsampled(parent)
            context.set_trace(trace)
        else:
            span = tracing.start(
                scope["method"], kind=tracing.SERVER, parent=parent, service=self.service,
                attributes={"url.path": scope["path"]},
            )  # fmt: skip
            assert span is not None
            trace = span.trace
        deadline = context.deadline_from_header(_header(headers, b"x-deadline-ms"))
        context.set_deadline(deadline)
        started = time.perf_counter()
        status = 500
        if deadline is not None and deadline <= time.monotonic():
            # The caller has already given up: doing the work would only waste it.
            expired = BankError("timeout.deadline_exceeded", "the caller's deadline passed before we started")
            await error_response(expired)(scope, receive, send)
            if span is not None:
                span.set("http.response.status_code", expired.status)
                span.end(restore=False)
            return

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"traceparent", trace.header.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if span is not None:
                span.rename(f"{scope['method']} {template}")
                span.set("http.route", template)
                span.set("http.response.status_code", status)
                if status >= 500:
                    span.fail()
                span.end(restore=False)
            if template not in _UNMETERED:
                elapsed = time.perf_counter() - started
                method = scope["method"]
                HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
                HTTP_LATENCY.labels(self.service, method, template).observe(elapsed)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def malformed(exc: ValidationError) -> BankError:
    """A typed 400 naming the first bad field, built from the error's type and location only (never
    its input, which may be a PAN)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    kind = first["type"]
    param = ".".join(str(p) for p in first["loc"]) or "message"
    if kind == "json_invalid":
        return BankError(
            "bad_request.malformed_message", "the body is not valid JSON", params={"param": "body"}
        )
    if kind == "missing":
        return BankError("bad_request.missing_param", f"{param} is required", params={"param": param})
    return BankError("bad_request.bad_param", f"{param}: {first['msg']}", params={"param": param})


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BankError("payload_too_large.request", f"messages are at most {max_bytes} bytes")
    raw = await request.body()
    if len(raw) > max_bytes:
        raise BankError("payload_too_large.request", f"messages are at most {max_bytes} bytes")
    return raw


async def read_model(request: Request, model: type[M], max_bytes: int = 1024 * 1024) -> M:
    """The JSON body as `model`, or a typed 400 (a route that parses its own body: a direct route,
    or one that must never echo its input)."""
    raw = await read_body(request, max_bytes)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise malformed(exc) from None


def error_response(error: BankError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BankError)
    async def bank_error(_: Request, exc: BankError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
        param = ".".join(loc) or "request"
        missing = first.get("type") == "missing"
        code = "bad_request.missing_param" if missing else "bad_request.bad_param"
        message = f"{param} is required" if missing else f"{param}: {first.get('msg', 'invalid value')}"
        return error_response(BankError(code, message, params={"param": param}))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found.route", 405: "method_not_allowed.route"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            {"code": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def connection_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("connection refused or lost: %s", exc, extra=log_fields(path=request.url.path))
        error = BankError("service_unavailable.database", "the database is unavailable; try again")
        return JSONResponse(error.body(), status_code=error.status, headers={"Retry-After": "1"})

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or isinstance(exc.orig, OSError | ConnectionError):
            return await connection_error(request, exc)
        return await unexpected(request, exc)

    # Raised bare (not as a DBAPIError) when a pool reconnects to a database that is down, and by
    # the hot path's plain asyncpg connections (shared/db.py) when theirs is lost or shut down.
    for lost in _CONNECTION_LOST:
        app.add_exception_handler(lost, connection_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra=log_fields(path=request.url.path))
        return error_response(BankError("internal.error", "something went wrong on our side"))


def create_app(
    service: str,
    *,
    routers: Iterable[APIRouter] = (),
    checkers: dict[str, Checker] | None = None,
    background: Iterable[Background] = (),
    on_startup: Iterable[Hook] = (),
    on_shutdown: Iterable[Hook] = (),
    title: str | None = None,
    direct_routes: Iterable[tuple[str, str]] = (),
    **fastapi_kwargs: Any,
) -> FastAPI:
    """`direct_routes`: (method, path) of the hottest routes, dispatched past FastAPI's router
    (shared/direct.py)."""
    checkers = dict(checkers or {})
    background = list(background)
    on_startup = list(on_startup)
    on_shutdown = list(on_shutdown)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        for hook in on_startup:
            await hook()
        # Everything built so far (modules, classes, the app, settings) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks ~100,000 objects (a pause
        # of ~100 ms on the card path that showed in its p99).
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(job(), name=getattr(job, "__name__", "job")) for job in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for hook in on_shutdown:
                await hook()
            tracing.shutdown()  # the OTLP exporter's last batch, if one is configured

    if not tracing.configured():
        tracing.configure(service)
    app = FastAPI(title=title or f"bank {service}", lifespan=lifespan, **fastapi_kwargs)
    install_error_handlers(app)
    direct_routes = tuple(direct_routes)
    if direct_routes:  # added first: inside the request context (trace, deadline, metrics)
        app.add_middleware(DirectRoutes, routes=direct_routes)
    app.add_middleware(RequestContextMiddleware, service=service)
    app.state.service = service
    app.state.checkers = checkers

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ok, report = await run_checkers(checkers)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "service": service, "checks": report},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(tracing.spans_router())
    for router in routers:
        app.include_router(router)
    return app


def json_body_doc(*schemas: str) -> dict[str, Any]:
    """`openapi_extra` for a route that parses its own JSON body: one of the named component schemas
    (put there by `document_models`)."""
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in schemas]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put request bodies that routes parse themselves (`read_model`) into the OpenAPI components,
    where the routes' `openapi_extra` refers to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in doc.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = doc
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
