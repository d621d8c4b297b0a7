"""The gateway's request pipeline, as two plain ASGI middlewares around the shared app.

    AccessLog            request id in and out, one JSON log line per request
      RequestContextMiddleware (shared.web)   trace context, deadline, metrics, traceparent
        EdgeRouter       route table -> auth -> rate limit -> body -> upstream (or the gateway's own pages)
          FastAPI        /ops, /docs, /openapi.json, /healthz, /readyz, /metrics

Plain ASGI rather than FastAPI routes: this is on the card authorisation path
and must add microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.limits import RateLimiter, retry_after
from services.gateway.proxy import Caller, ClientGone, Proxy, read_body, request_headers, response_headers
from services.gateway.routes import Route, RouteTable
from services.gateway.shedding import Shedder
from shared import context
from shared.errors import BankError
from shared.observability import log_fields
from shared.web import error_response

if TYPE_CHECKING:
    from services.gateway.identity import EdgeIdentity

access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway.edge")

INFO_KEY = "gateway.request"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
DEADLINE_HEADER = context.DEADLINE_HEADER.encode()


@dataclass(slots=True)
class RequestInfo:
    """Filled in along the pipeline, logged once at the end."""

    request_id: str
    route: Route | None = None
    user_id: str | None = None
    client_gone: bool = False  # disconnected before its request was read: logged as 499


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-Id if it looks like one (short, plain characters), else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID_RE.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def _drop_client_deadline(scope: Scope) -> None:
    """x-deadline-ms is the bank's internal budget header: at the edge the route table sets the
    budget, so a client's value is ignored (shared.web would otherwise act on it)."""
    headers = scope["headers"]
    for name, _ in headers:
        if name == DEADLINE_HEADER:
            scope["headers"] = [(n, v) for n, v in headers if n != DEADLINE_HEADER]
            return


def client_ip(scope: Scope) -> str:
    # scope["client"] is the peer, or the client a trusted proxy named (uvicorn's
    # --forwarded-allow-ips / FORWARDED_ALLOW_IPS, by default only 127.0.0.1).
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AccessLog:
    """Outermost: every response gets X-Request-Id, every request one log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        _drop_client_deadline(scope)
        info = RequestInfo(request_id_from(scope))
        scope[INFO_KEY] = info
        request_id = info.request_id.encode()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            status = status or (499 if info.client_gone else 500)
            path = scope["path"]
            level = logging.DEBUG if path in _PROBES else logging.INFO
            if access_log.isEnabledFor(level):
                trace = context.current_trace()
                route = info.route
                fields = log_fields(
                    route=route.prefix if route else None,
                    upstream=route.upstream if route else None,
                    method=scope["method"],
                    path=path,
                    status=status,
                    latency_ms=round((time.perf_counter() - started) * 1000, 2),
                    user_id=info.user_id,
                    client_ip=client_ip(scope),
                    trace_id=trace.trace_id if trace else None,
                    request_id=info.request_id,
                )
                access_log.log(level, "%s %s %s", scope["method"], path, status, extra=fields)


def carries_nul(path: bytes, query: bytes, body: bytes, content_type: bytes | None) -> bool:
    """A NUL anywhere a service would store text (PostgreSQL text and jsonb refuse it, so the service
    would answer 500): in the path or query (%00), a form body (%00 or raw), a JSON body (\\u0000)."""
    if b"%00" in path or b"%00" in query:
        return True
    if not body:
        return False
    kind = (content_type or b"").split(b";", 1)[0].strip().lower()
    if kind == b"application/x-www-form-urlencoded":
        return b"%00" in body or b"\x00" in body
    if kind == b"application/json" or kind.endswith(b"+json"):
        return b"\\u0000" in body or b"\x00" in body
    return False


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _has_dot_segment(path: str) -> bool:
    return "/." in path and any(s in (".", "..") for s in path.split("/"))


class EdgeRouter:
    """Inside the request context: decide, admit, and forward (or hand to the gateway's own pages)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        table: RouteTable,
        identity: EdgeIdentity,
        limiter: RateLimiter,
        proxy: Proxy,
        max_body_bytes: int,
        shedder: Shedder | None = None,
    ) -> None:
        self.app = app
        self.shedder = shedder or Shedder()
        self.table = table
        self.identity = identity
        self.limiter = limiter
        self.proxy = proxy
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info: RequestInfo = scope.get(INFO_KEY) or RequestInfo(uuid.uuid4().hex)
        try:
            route = self._route(scope["method"], scope["path"])
            info.route = route
            scope["route"] = route  # the metrics label: the route's prefix
            headers = dict(scope["headers"])
            caller = Caller(client_ip(scope), scope.get("scheme", "http"), info.request_id)
            await self._admit(route, headers, caller)
            info.user_id = caller.identity.user_id if caller.identity else None
            if not route.local:
                await self._forward(route, scope, receive, send, headers, caller)
                return
        except BankError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except ClientGone:
            info.client_gone = True
            return
        await self.app(scope, receive, send)

    def _route(self, method: str, path: str) -> Route:
        group = None if _has_dot_segment(path) else self.table.match(path)
        if group is None:
            raise BankError("not_found.route", f"there is no {path} in this API")
        route = group.by_method.get(method)
        if route is None:
            raise BankError(
                "method_not_allowed.route",
                f"{method} is not allowed on {path}; use {group.allow}",
                headers={"Allow": group.allow},
            )
        return route

    async def _admit(self, route: Route, headers: dict[bytes, bytes], caller: Caller) -> None:
        authorization = _text(headers.get(b"authorization"))
        if route.auth == "user":
            caller.identity = await self.identity.user(authorization)
            key = "user:" + caller.identity.user_id
        else:
            if route.auth == "network":
                self.identity.network(_text(headers.get(b"x-network-key")), authorization)
            key = "ip:" + caller.client_ip
        wait = self.limiter.check(route.rate_limit, key)
        if wait:
            after = retry_after(wait)
            raise BankError(
                "rate_limited.too_many_requests",
                f"too many requests; try again in {after} s",
                headers={"Retry-After": after},
            )

    async def _forward(
        self,
        route: Route,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        caller: Caller,
    ) -> None:
        body = await read_body(receive, headers.get(b"content-length"), route.max_body or self.max_body_bytes)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        if carries_nul(raw_path, query, body, headers.get(b"content-type")):
            raise BankError(
                "bad_request.nul_character",
                "the request carries a NUL character (%00), which no field accepts",
            )
        target = (raw_path + b"?" + query if query else raw_path).decode("latin-1")
        forwarded = request_headers(scope["headers"], route, caller, self.proxy.internal_token)
        method = scope["method"]
        try:
            self.shedder.admit(route.priority)
        except BankError:
            await asyncio.sleep(self.shedder.refusal_pause)
            raise
        status = 500
        try:
            resp = await self.proxy.forward(route, method, target, forwarded, body)
            status = resp.status_code
        finally:
            self.shedder.done(route.priority, status)
        if status == 429:  # refused upstream: paced as our own refusals are
            await asyncio.sleep(self.shedder.refusal_pause)
        await send(
            {
                "type": "http.response.start",
                "status": resp.status_code,
                "headers": response_headers(resp, method),
            }
        )
        await send({"type": "http.response.body", "body": resp.content})
