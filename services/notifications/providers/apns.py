"""Apple Push Notification service over HTTP/2, with token-based (ES256 JWT) provider authentication.

`POST {base}/3/device/{token}` with the JSON payload and the headers Apple documents: `authorization:
bearer <provider token>`, `apns-topic` (the bundle id), `apns-push-type: alert`, `apns-priority: 10`,
`apns-expiration`, `apns-id` and `apns-collapse-id` (both the push's id, stable across retries, so a
notification sent twice after a crash shows once on the phone).

The provider token is a JWT signed with the team's .p8 key (ES256; header kid = key id; claims iss =
team id, iat). Apple rejects one older than an hour and refusing refreshes more often than every 20
minutes, so it is cached and re-signed every `refresh_seconds` (50 minutes by default), or at once after
an `ExpiredProviderToken` answer.

The client speaks HTTP/2 only (`http1=False`): over TLS it negotiates h2 by ALPN, as Apple requires; over
plain http (the local fake) it uses h2 with prior knowledge.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt

from services.notifications.messages import fit
from services.notifications.providers import (
    PAYLOAD_LIMIT,
    Push,
    SendResult,
    compact_json,
    retry_after_seconds,
)

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
    alert = {"title": title, "body": body} if title else {"body": body}
    return compact_json({"aps": {"alert": alert, "sound": "default"}, **push.data})


def fitted_payload(push: Push) -> bytes:
    """The JSON body, its alert text shortened if needed so it never exceeds Apple's 4 KiB."""
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.topic = topic
        self.token = token
        self.expiration_seconds = expiration_seconds
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            http1=False,
            http2=True,
            timeout=timeout,
            trust_env=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, push: Push) -> SendResult:
        headers = {
            "authorization": f"bearer {self.token.get()}",
            "apns-topic": self.topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-expiration": str(
                int(time.time()) + self.expiration_seconds if self.expiration_seconds else 0
            ),
            "apns-id": push.push_id,
            "apns-collapse-id": push.push_id,
            "content-type": "application/json",
        }
        try:
            resp = await self.client.post(
                f"/3/device/{push.token}", content=fitted_payload(push), headers=headers
            )
        except httpx.HTTPError as exc:
            return SendResult("retry", None, f"{type(exc).__name__}: {exc}")
        return self.classify(resp)

    def classify(self, resp: httpx.Response) -> SendResult:
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
