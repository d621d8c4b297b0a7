"""Forwarding one request to its upstream: body limit, header hygiene, the call, the answer.

One `ServiceClient` per upstream (one pooled keep-alive httpx client, deadline and
trace propagation, retries for idempotent calls only, a circuit breaker), called
without httpx's request and response models (`ServiceClient.exchange`, decision 0026).
The upstream's answer is buffered, not streamed: the bank's answers are small JSON,
and a buffered answer is what lets the client retry a 502/503/504 and the
breaker judge the call before the first byte goes to the caller (decision 0008).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from starlette.types import Message, Receive

from services.gateway.config import GatewaySettings
from services.gateway.routes import Route
from shared import context
from shared.auth import INTERNAL_TOKEN_HEADER, Identity
from shared.errors import BankError
from shared.http import CircuitBreaker, ServiceClient
from shared.lean_transport import Answer, LeanTransport

log = logging.getLogger("gateway.proxy")

USER_ID_HEADER = "x-bank-user-id"
CLIENT_ID_HEADER = "x-bank-client-id"
NETWORK_KEY_HEADER = "x-network-key"
REQUEST_ID_HEADER = "x-request-id"

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded (plus any named in Connection).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
# Request headers the gateway never passes on as the client sent them: it sets its own (host,
# length, forwarding, trace, deadline, request id, encoding) or they are secrets/identities only
# the gateway may assert (x-bank-*, x-internal-token) or only the gateway may see (x-network-key).
_DROP_REQUEST = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"forwarded",
    b"x-real-ip",
    b"traceparent",
    b"x-deadline-ms",
    b"x-request-id",
    b"accept-encoding",
    b"expect",
    INTERNAL_TOKEN_HEADER.encode(),
    NETWORK_KEY_HEADER.encode(),
}
_DROP_REQUEST_PREFIXES = (b"proxy-", b"x-bank-", b"x-forwarded-")
# Response headers replaced by the gateway's own (length of the buffered body, date, server,
# its traceparent and request id) or meaningless after httpx decoded the body.
_DROP_RESPONSE = HOP_BY_HOP | {
    b"content-length",
    b"content-encoding",
    b"date",
    b"server",
    b"traceparent",
    b"x-request-id",
}
_NO_BODY_STATUSES = frozenset({204, 304})


class ClientGone(Exception):
    """The client disconnected before sending its whole request: nobody to answer."""


def too_large(limit: int) -> BankError:
    return BankError(
        "payload_too_large.request",
        f"the request body is larger than {limit} bytes",
        params={"limit": limit},
    )


async def read_body(receive: Receive, content_length: bytes | None, limit: int) -> bytes:
    """The whole request body, refusing (413) a declared or an actual size above `limit`."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BankError("bad_request.content_length", "Content-Length is not a number") from None
        if declared > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if chunk:
            chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _NoCookies(httpx.Cookies):
    """A client shared by every caller must never keep one caller's cookies and send them with the
    next caller's requests; Set-Cookie still reaches the caller, as a header. (Not parsing them is
    also a fifth of httpx's per-call CPU.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def upstream_client(name: str, base_url: str, config: GatewaySettings) -> ServiceClient:
    """The pooled client for one upstream, shared by every request routed to it."""
    # Idle connections expire after 4 s, before uvicorn's 5 s keep-alive closes them under us.
    transport: httpx.AsyncBaseTransport
    if config.upstream_transport == "lean":
        transport = LeanTransport(max_connections=config.upstream_connections, keepalive_expiry=4.0)
    else:
        limits = httpx.Limits(
            max_connections=config.upstream_connections,
            max_keepalive_connections=config.upstream_connections,
            keepalive_expiry=4.0,
        )
        transport = httpx.AsyncHTTPTransport(limits=limits)
    breaker = CircuitBreaker(
        name, failure_threshold=config.breaker_failures, reset_timeout=config.breaker_reset_seconds
    )
    client = ServiceClient(
        name,
        base_url,
        retries=config.upstream_retries,
        breaker=breaker,
        transport=transport,
    )
    client._client._cookies = _NoCookies()  # see _NoCookies; ServiceClient does not expose its client
    return client


@dataclass(slots=True)
class Caller:
    """What the edge established about the request before it is forwarded."""

    client_ip: str
    scheme: str
    request_id: str
    identity: Identity | None = None


def request_headers(
    raw: Sequence[tuple[bytes, bytes]], route: Route, caller: Caller, internal_token: str
) -> dict[str, str]:
    """The headers sent upstream: the client's, cleaned, plus what the gateway vouches for."""
    headers: dict[str, str] = {}
    connection_tokens: set[bytes] = set()
    for name, value in raw:
        if name == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
    for name, value in raw:
        if name in _DROP_REQUEST or name in connection_tokens or name.startswith(_DROP_REQUEST_PREFIXES):
            continue
        if route.auth == "network" and name == b"authorization":
            continue  # the network's routes do not take user tokens; cards trusts x-internal-token
        text = value.decode("latin-1")
        if not text.isascii():
            continue  # httpx sends ASCII only; such a header cannot be meaningful to our services
        key = name.decode("latin-1")
        if key in headers:  # repeated header: one field, as RFC 9110 §5.3 allows (cookies use "; ")
            headers[key] += ("; " if key == "cookie" else ", ") + text
        else:
            headers[key] = text
    headers["accept-encoding"] = "identity"
    headers["x-forwarded-for"] = caller.client_ip
    headers["x-forwarded-proto"] = caller.scheme
    host = next((v for n, v in raw if n == b"host"), None)
    if host is not None and host.isascii():
        headers["x-forwarded-host"] = host.decode("latin-1")
    headers[REQUEST_ID_HEADER] = caller.request_id
    if caller.identity is not None:
        headers[USER_ID_HEADER] = caller.identity.user_id
        headers[CLIENT_ID_HEADER] = caller.identity.client_id
    if route.auth == "network":
        headers[INTERNAL_TOKEN_HEADER] = internal_token
    return headers


def response_headers(resp: Answer, method: str) -> list[tuple[bytes, bytes]]:
    """The upstream's headers, cleaned, for the caller (the gateway adds its own afterwards)."""
    raw = resp.headers
    connection_tokens = {
        t.strip().lower() for n, v in raw if n.lower() == b"connection" for t in v.split(b",")
    }
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower in connection_tokens or lower.startswith(b"proxy-"):
            if not (lower == b"content-length" and method == "HEAD"):
                continue
        out.append((lower, value))
    if method != "HEAD" and resp.status_code not in _NO_BODY_STATUSES and resp.status_code >= 200:
        out.append((b"content-length", str(len(resp.content)).encode()))
    return out


class Proxy:
    def __init__(self, clients: dict[str, ServiceClient], internal_token: str) -> None:
        self.clients = clients
        self.internal_token = internal_token

    async def forward(
        self, route: Route, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Answer:
        """Call the route's upstream within the route's time limit (and the caller's, if shorter)."""
        limit = time.monotonic() + route.timeout
        current = context.current_deadline()
        context.set_deadline(limit if current is None else min(current, limit))
        client = self.clients[route.upstream]
        try:
            return await client.exchange(
                method, target, body=body or None, headers=headers, timeout=route.timeout
            )
        except BankError as exc:
            raise _public(exc, route.upstream) from exc


def _public(exc: BankError, upstream: str) -> BankError:
    """Keep the typed code; say it without the internal detail (that goes to the log)."""
    log.warning("%s %s", upstream, exc.message)
    if exc.code == "service_unavailable.circuit_open":
        message = f"the {upstream} service is failing; not calling it for a few seconds"
    elif exc.code.startswith("timeout."):
        message = f"the {upstream} service did not answer in time"
    else:
        message = f"the {upstream} service is unavailable; try again shortly"
    return BankError(exc.code, message, params={"upstream": upstream})
