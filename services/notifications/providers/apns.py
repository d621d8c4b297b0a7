"""Apple Push Notification service over HTTP/2, with token-based (ES256 JWT) provider authentication.

`POST {base}/3/device/{token}` with the JSON payload and the headers Apple documents: `authorization:
bearer <provider token>`, `apns-topic` (the bundle id), `apns-push-type: alert`, `apns-priority: 10`,
`apns-expiration`, `apns-id` and `apns-collapse-id` (both the push's id, stable across retries, so a
notification sent twice after a crash shows once on the phone).

The provider token is a JWT signed with the team's .p8 key (ES256; header kid = key id; claims iss =
team id, iat). Apple rejects one older than an hour and refusing refreshes more often than every 20
minutes, so it is cached and re-signed every `refresh_seconds` (50 minutes by default), or at once after
an `ExpiredProviderToken` answer.

One HTTP/2 connection carries every push as a stream of its own (providers/http2.py): over TLS it
negotiates h2 by ALPN, as Apple requires; over plain http (the local fake) it uses h2 with prior
knowledge. The header fields that do not change between pushes are encoded once, and the provider
token's field once per token.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import quote

import jwt

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
from services.notifications.providers.http2 import Http2Client, Response, field, fields
from shared.retry_after import retry_after_seconds

# Apple's reasons that mean this device token will never work again: deactivate, never retry.
DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic", "ExpiredToken"})
# The provider token needs re-signing; the push itself is fine.
STALE_CREDENTIAL_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})


class ProviderToken:
    """The cached ES256 provider JWT."""

    def __init__(
        self,
        team_id: str,
        key_id: str,
        key_pem: str,
        *,
        refresh_seconds: float = 50 * 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.team_id = team_id
        self.key_id = key_id
        self.key_pem = key_pem
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._token: str | None = None
        self._issued_at = 0.0

    def get(self) -> str:
        now = self.clock()
        if self._token is None or now - self._issued_at >= self.refresh_seconds:
            self._issued_at = now
            self._token = jwt.encode(
                {"iss": self.team_id, "iat": int(now)},
                self.key_pem,
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
        return self._token

    def invalidate(self) -> None:
        self._token = None


def payload(push: Push, title: str, body: str) -> bytes:
    """`{"aps":{"alert":{"title":…,"body":…},"sound":"default"},…data}`, compact, UTF-8."""
    if not plain_data(push.data, "aps"):
        alert = {"title": title, "body": body} if title else {"body": body}
        return compact_json({"aps": {"alert": alert, "sound": "default"}, **push.data})
    alert_json = f'"title":{json_string(title)},"body":' if title else '"body":'
    members = json_members(push.data)
    return f'{{"aps":{{"alert":{{{alert_json}{json_string(body)}}},"sound":"default"}}{members}}}'.encode()


def fitted_payload(push: Push) -> bytes:
    """The JSON body, its alert text shortened if needed so it never exceeds Apple's 4 KiB."""
    whole = payload(push, push.title, push.body)
    if len(whole) <= PAYLOAD_LIMIT:
        return whole
    title, body = fit(push.title, push.body, lambda t, b: payload(push, t, b), PAYLOAD_LIMIT)
    return payload(push, title, body)


class ApnsProvider:
    platform = "apns"

    def __init__(
        self,
        base_url: str,
        topic: str,
        token: ProviderToken,
        *,
        timeout: float = 10.0,
        expiration_seconds: int = 24 * 3600,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.topic = topic
        self.token = token
        self.expiration_seconds = expiration_seconds
        self.client = Http2Client(base_url.rstrip("/"), timeout=timeout, ssl_context=ssl_context)
        self._fixed = fields(
            [
                (b"apns-topic", topic.encode()),
                (b"apns-push-type", b"alert"),
                (b"apns-priority", b"10"),
                (b"content-type", b"application/json"),
            ]
        )
        self._authorization = ("", b"")  # (provider token, its encoded header field)

    async def aclose(self) -> None:
        await self.client.aclose()

    def authorization(self) -> bytes:
        token = self.token.get()
        if token != self._authorization[0]:
            self._authorization = (token, field(b"authorization", f"bearer {token}".encode()))
        return self._authorization[1]

    async def send(self, push: Push) -> SendResult:
        return (await self.send_many([push]))[0]

    async def send_many(self, pushes: Sequence[Push]) -> list[SendResult]:
        expiration = int(time.time()) + self.expiration_seconds if self.expiration_seconds else 0
        common = self.authorization() + self._fixed + field(b"apns-expiration", str(expiration).encode())

        def request(push: Push) -> tuple[str, bytes, bytes]:
            push_id = push.push_id.encode()
            headers = common + field(b"apns-id", push_id) + field(b"apns-collapse-id", push_id)
            return f"/3/device/{quote(push.token, safe='')}", headers, fitted_payload(push)

        return await exchange_all(self.client, pushes, request, self.classify)

    def classify(self, resp: Response) -> SendResult:
        status = resp.status_code
        if status == 200:
            return SendResult("sent", 200, "", provider_id=resp.headers.get("apns-id"))
        try:
            doc = resp.json()
            reason = str(doc.get("reason", "")) if isinstance(doc, dict) else ""
        except ValueError:
            reason = ""
        reason = reason or f"HTTP {status}"
        retry_after = retry_after_seconds(resp.headers.get("retry-after"))
        if status == 410 or reason in DEAD_TOKEN_REASONS:
            return SendResult("invalid_token", status, reason)
        if status == 403 and reason in STALE_CREDENTIAL_REASONS:
            self.token.invalidate()
            return SendResult("retry", status, reason, retry_after)
        if status == 429 or status >= 500:
            return SendResult("retry", status, reason, retry_after)
        return SendResult("failed", status, reason)
