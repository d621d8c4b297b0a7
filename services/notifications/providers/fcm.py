"""Firebase Cloud Messaging, HTTP v1 API, with an OAuth2 bearer from a pluggable token source.

`POST {base}/v1/projects/{project}/messages:send` with `{"message": {"token", "notification": {"title",
"body"}, "data", "android", "apns"}}`. Errors are google.rpc Status bodies: `{"error": {"code",
"message", "status", "details": [{"@type": "…FcmError", "errorCode": "UNREGISTERED"}]}}`.

One HTTP/2 connection carries every push as a stream of its own (providers/http2.py; h2 by ALPN over
TLS, with prior knowledge over plain http, the local fake). The token endpoint, called about once an
hour, is plain httpx.

The default token source is a service account: a JWT assertion signed with its RSA key (RS256) is
exchanged at the token URI for an access token (RFC 7523 jwt-bearer grant), cached until a minute before
it expires. Anything with `async token()` and `invalidate()` can stand in (tests, workload identity).
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.notifications.messages import fit
from services.notifications.providers import (
    PAYLOAD_LIMIT,
    Push,
    SendResult,
    compact_json,
    exchange_all,
    json_members,
    json_string,
    plain_data,
)
from services.notifications.providers.http2 import Http2Client, Response, field
from shared.retry_after import retry_after_seconds

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The token is gone (app uninstalled, token rotated) or was never valid: deactivate, never retry.
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
RETRY_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"})


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


class StaticToken:
    def __init__(self, value: str) -> None:
        self.value = value

    async def token(self) -> str:
        return self.value

    def invalidate(self) -> None:
        pass


@functools.cache
def generate_dev_private_key() -> str:
    """A development service-account key, made once per process (real FCM refuses it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class ServiceAccountToken:
    """OAuth2 access tokens for a Google service account (the jwt-bearer grant)."""

    def __init__(
        self,
        client_email: str,
        private_key_pem: str,
        token_uri: str,
        *,
        scope: str = SCOPE,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client_email = client_email
        self.private_key_pem = private_key_pem
        self.token_uri = token_uri
        self.scope = scope
        self.clock = clock
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False, transport=transport)
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def from_file(cls, path: str, *, default_token_uri: str, **kw: Any) -> ServiceAccountToken:
        """From Google's service-account JSON key file (client_email, private_key, token_uri)."""
        with open(path) as f:
            doc = json.load(f)
        return cls(doc["client_email"], doc["private_key"], doc.get("token_uri") or default_token_uri, **kw)

    def assertion(self) -> str:
        now = int(self.clock())
        claims = {
            "iss": self.client_email,
            "scope": self.scope,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        }
        return jwt.encode(claims, self.private_key_pem, algorithm="RS256")

    async def token(self) -> str:
        if self._token is not None and self.clock() < self._expires_at:
            return self._token
        async with self._lock:
            if self._token is not None and self.clock() < self._expires_at:
                return self._token
            resp = await self._client.post(
                self.token_uri, data={"grant_type": JWT_BEARER, "assertion": self.assertion()}
            )
            resp.raise_for_status()
            doc = resp.json()
            self._token = str(doc["access_token"])
            self._expires_at = self.clock() + max(0.0, float(doc.get("expires_in", 3600)) - 60)
            return self._token

    def invalidate(self) -> None:
        self._token = None

    async def aclose(self) -> None:
        await self._client.aclose()


def message(push: Push, title: str, body: str, ttl_seconds: int) -> dict[str, Any]:
    return {
        "message": {
            "token": push.token,
            "notification": {"title": title, "body": body},
            "data": {"push_id": push.push_id, **push.data},
            "android": {
                "priority": "high",
                "ttl": f"{ttl_seconds}s",
                "collapse_key": push.push_id,
                "notification": {"tag": push.push_id},
            },
            "apns": {"headers": {"apns-priority": "10", "apns-collapse-id": push.push_id}},
        }
    }


def render(push: Push, title: str, body: str, ttl_seconds: int) -> bytes:
    """`message(…)` as compact JSON, UTF-8."""
    if not plain_data(push.data, "push_id"):
        return compact_json(message(push, title, body, ttl_seconds))
    token, push_id = json_string(push.token), json_string(push.push_id)
    return (
        f'{{"message":{{"token":{token},"notification":{{"title":{json_string(title)},'
        f'"body":{json_string(body)}}},"data":{{"push_id":{push_id}{json_members(push.data)}}},'
        f'"android":{{"priority":"high","ttl":"{ttl_seconds}s","collapse_key":{push_id},'
        f'"notification":{{"tag":{push_id}}}}},'
        f'"apns":{{"headers":{{"apns-priority":"10","apns-collapse-id":{push_id}}}}}}}}}'
    ).encode()


def fitted_body(push: Push, ttl_seconds: int = 24 * 3600) -> bytes:
    """The request body, its notification text shortened if needed so it never exceeds 4 KiB."""
    whole = render(push, push.title, push.body, ttl_seconds)
    if len(whole) <= PAYLOAD_LIMIT:
        return whole
    title, body = fit(push.title, push.body, lambda t, b: render(push, t, b, ttl_seconds), PAYLOAD_LIMIT)
    return render(push, title, body, ttl_seconds)


def _error(resp: Response) -> tuple[str, str]:
    """(status, errorCode) of a google.rpc Status body; empty strings where absent."""
    try:
        error = resp.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", ""
    status = str(error.get("status") or "")
    code = ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            code = str(detail["errorCode"])
    return status, code


class FcmProvider:
    platform = "fcm"

    def __init__(
        self,
        base_url: str,
        project_id: str,
        tokens: TokenSource,
        *,
        timeout: float = 10.0,
        ttl_seconds: int = 24 * 3600,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.path = f"/v1/projects/{quote(project_id, safe='')}/messages:send"
        self.tokens = tokens
        self.ttl_seconds = ttl_seconds
        self.client = Http2Client(base_url.rstrip("/"), timeout=timeout, ssl_context=ssl_context)
        self._content_type = field(b"content-type", b"application/json; charset=UTF-8")
        self._authorization = ("", b"")  # (access token, its encoded header field)

    async def aclose(self) -> None:
        await self.client.aclose()
        if isinstance(self.tokens, ServiceAccountToken):
            await self.tokens.aclose()

    async def send(self, push: Push) -> SendResult:
        return (await self.send_many([push]))[0]

    async def send_many(self, pushes: Sequence[Push]) -> list[SendResult]:
        try:
            bearer = await self.tokens.token()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return [SendResult("retry", None, f"no OAuth2 token: {type(exc).__name__}: {exc}")] * len(pushes)
        if bearer != self._authorization[0]:
            self._authorization = (bearer, field(b"authorization", f"Bearer {bearer}".encode()))
        headers = self._authorization[1] + self._content_type

        def request(push: Push) -> tuple[str, bytes, bytes]:
            return self.path, headers, fitted_body(push, self.ttl_seconds)

        return await exchange_all(self.client, pushes, request, self.classify)

    def classify(self, resp: Response) -> SendResult:
        status = resp.status_code
        if status == 200:
            try:
                name = str(resp.json().get("name") or "")
            except (ValueError, AttributeError):
                name = ""
            return SendResult("sent", 200, "", provider_id=name or None)
        rpc_status, code = _error(resp)
        reason = code or rpc_status or f"HTTP {status}"
        retry_after = retry_after_seconds(resp.headers.get("retry-after"))
        if status == 404 or code in DEAD_TOKEN_CODES or (status == 400 and rpc_status == "INVALID_ARGUMENT"):
            return SendResult("invalid_token", status, reason)
        if status == 401 or code == "THIRD_PARTY_AUTH_ERROR":
            self.tokens.invalidate()
            return SendResult("retry", status, reason, retry_after)
        if status == 429 or status >= 500 or code in RETRY_CODES:
            return SendResult("retry", status, reason, retry_after)
        return SendResult("failed", status, reason)
