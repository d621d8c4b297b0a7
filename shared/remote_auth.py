"""Access tokens verified by any service with accounts' public keys (decision 0006).

Keys: `GET {accounts}/oauth2/jwks.json`, cached; a token naming an unknown kid
refreshes them, at most once per `jwks_min_refresh_seconds`. Revocations:
`GET {accounts}/oauth2/revocations?since=` polled in the background into a map
jti -> expiry. If the list cannot be polled, tokens are still checked for
signature and expiry (the gateway checks revocation too): freezing a lost card
must keep working while accounts is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.auth import TokenVerifier, public_keys_from_jwks
from shared.errors import BankError
from shared.http import ServiceClient, raise_for_upstream_error

log = logging.getLogger("shared.remote_auth")

OVERLAP = timedelta(minutes=1)  # a revocation can commit a moment after the time it records


class AccountsKeys:
    def __init__(self, client: ServiceClient, min_refresh_seconds: float) -> None:
        self.client = client
        self.min_refresh_seconds = min_refresh_seconds
        self.keys: dict[str, Ed25519PublicKey] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, kid: str) -> Ed25519PublicKey | None:
        if (key := self.keys.get(kid)) is not None:
            return key
        async with self._lock:
            if kid in self.keys:
                return self.keys[kid]
            due = self._fetched_at is None or time.monotonic() - self._fetched_at >= self.min_refresh_seconds
            if due:
                self._fetched_at = time.monotonic()
                try:
                    resp = raise_for_upstream_error(await self.client.get("/oauth2/jwks.json"), "accounts")
                    self.keys = public_keys_from_jwks(resp.json())
                except (BankError, ValueError) as exc:
                    log.warning("cannot load accounts' JWKS: %s", exc)
                    if not self.keys:
                        raise BankError(
                            "service_unavailable.accounts", "access tokens cannot be checked right now"
                        ) from None
            return self.keys.get(kid)


class Revocations:
    def __init__(self, client: ServiceClient, poll_seconds: float) -> None:
        self.client = client
        self.poll_seconds = poll_seconds
        self._revoked: dict[str, float] = {}
        self._as_of: datetime | None = None

    async def is_revoked(self, jti: str) -> bool:
        expires = self._revoked.get(jti)
        return expires is not None and expires > time.time()

    async def poll(self) -> None:
        params = {"since": (self._as_of - OVERLAP).isoformat()} if self._as_of else None
        resp = raise_for_upstream_error(
            await self.client.get("/oauth2/revocations", params=params), "accounts"
        )
        body = resp.json()
        now = time.time()
        for item in body["revoked"]:
            self._revoked[item["jti"]] = datetime.fromisoformat(item["expires_at"]).timestamp()
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp > now}
        self._as_of = datetime.fromisoformat(body["as_of"]) if body.get("as_of") else datetime.now(UTC)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.poll()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("cannot poll accounts' revocation list: %s", exc)
                failing = True
            await asyncio.sleep(self.poll_seconds)


def accounts_token_verifier(
    accounts_url: str, *, min_refresh_seconds: float, poll_seconds: float
) -> tuple[TokenVerifier, Revocations, ServiceClient]:
    client = ServiceClient("accounts", accounts_url, timeout=2.0, retries=1)
    keys = AccountsKeys(client, min_refresh_seconds)
    revocations = Revocations(client, poll_seconds)
    return TokenVerifier(keys.lookup, revocations.is_revoked), revocations, client
