"""Access tokens verified by any service with accounts' public keys (decision 0006).

Keys come from accounts' JWKS, cached, and refreshed when a token names an
unknown kid, at most once per `min_refresh_seconds` (so garbage kids cannot
hammer accounts). Evicted tokens come from accounts' revocation list, polled in
the background into an in-memory map jti -> expiry. If the keys cannot be
fetched, a token we cannot check is answered 503 (`service_unavailable.accounts`),
not 401: the token may be perfectly good. If the revocation list cannot be polled,
tokens are still checked for signature and expiry: freezing a lost card must keep
working while accounts is down.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.auth import TokenVerifier, public_keys_from_jwks
from shared.errors import BankError
from shared.http import CircuitBreaker, ServiceClient, raise_for_upstream_error

log = logging.getLogger("shared.remote_auth")

JWKS_PATH = "/oauth2/jwks.json"
REVOCATIONS_PATH = "/oauth2/revocations"
# Poll with `since` = the previous answer's as_of minus this overlap: a revocation can commit a
# moment after the time it records (decision 0006).
REVOCATION_OVERLAP = timedelta(minutes=1)


def _keys_unavailable() -> BankError:
    return BankError(
        "service_unavailable.accounts",
        "access tokens cannot be checked right now (the bank's signing keys are unavailable); try again",
        params={"upstream": "accounts"},
    )


class KeySet:
    """accounts' public keys by kid (JWKS), cached and refreshed on demand, rate-limited."""

    def __init__(
        self,
        client: ServiceClient,
        *,
        min_refresh_seconds: float = 5.0,
        min_retry_unloaded_seconds: float = 0.25,
        refresh_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.min_refresh_seconds = min_refresh_seconds
        self.min_retry_unloaded_seconds = min_retry_unloaded_seconds
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.loaded_at: float | None = None
        self.last_attempt: float | None = None
        self.last_error: str | None = None
        self.fetches = 0
        self.version = 0  # bumped whenever the set of keys changes
        self._lock = asyncio.Lock()

    async def _fetch(self) -> bool:
        self.last_attempt = self._clock()
        self.fetches += 1
        try:
            resp = raise_for_upstream_error(await self.client.get(JWKS_PATH), "accounts")
            keys = public_keys_from_jwks(resp.json())
        except Exception as exc:  # unreachable, an error answer, or not a JWKS: keep the old keys
            if self.last_error is None:
                log.warning("cannot load the JWKS from accounts: %s", exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if self.last_error is not None or self.loaded_at is None:
            log.info("JWKS loaded from accounts: %d key(s)", len(keys))
        if _raw(keys) != _raw(self.keys):
            self.version += 1
        self.keys, self.loaded_at, self.last_error = keys, self._clock(), None
        return True

    async def refresh(self) -> bool:
        async with self._lock:
            return await self._fetch()

    async def lookup(self, kid: str) -> Ed25519PublicKey | None:
        """The key for `kid`; None if accounts does not know it; 503 if we cannot find out."""
        key = self.keys.get(kid)
        if key is not None:
            return key
        async with self._lock:  # one refresh at a time; waiters see its result
            key = self.keys.get(kid)
            if key is not None:
                return key
            # Until the keys have loaded once, a request retries soon (accounts may have just come up
            # between two background attempts); after that, unknown kids refresh at most every
            # min_refresh_seconds so garbage kids cannot hammer accounts.
            gap = self.min_refresh_seconds if self.loaded_at is not None else self.min_retry_unloaded_seconds
            due = self.last_attempt is None or self._clock() - self.last_attempt >= gap
            if due:
                if not await self._fetch():
                    raise _keys_unavailable()
                return self.keys.get(kid)
            if self.loaded_at is None:
                raise _keys_unavailable()
            return None

    async def run(self) -> None:
        """Background: load the keys as soon as accounts answers, then refresh them periodically."""
        backoff = 0.25
        while True:
            ok = await self.refresh()
            if ok:
                backoff = 0.25
                await asyncio.sleep(self.refresh_seconds)
            else:
                # At most a second between attempts until the keys first load: a bank starting up
                # waits on them.
                backoff = min(backoff * 2, 10.0 if self.loaded_at is not None else 1.0)
                await asyncio.sleep(min(backoff, self.refresh_seconds))

    def details(self) -> dict[str, str]:
        now = self._clock()
        details = {
            "jwks_loaded": "yes" if self.loaded_at is not None else "no",
            "jwks_keys": str(len(self.keys)),
        }
        if self.loaded_at is not None:
            details["jwks_age_s"] = f"{now - self.loaded_at:.0f}"
        if self.last_error:
            details["jwks_error"] = self.last_error
        return details


def _raw(keys: dict[str, Ed25519PublicKey]) -> dict[str, bytes]:
    return {kid: key.public_bytes_raw() for kid, key in keys.items()}


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without a time zone: {text!r}")
    return moment


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class RevocationList:
    """Access tokens revoked before they expire (jti -> expiry), polled from accounts."""

    def __init__(
        self,
        client: ServiceClient,
        *,
        poll_seconds: float = 2.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.poll_seconds = poll_seconds
        self._wall = wall_clock
        self._revoked: dict[str, float] = {}
        self.as_of: datetime | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None

    def is_revoked(self, jti: str) -> bool:
        expires = self._revoked.get(jti)
        return expires is not None and expires > self._wall()

    async def poll(self) -> bool:
        started = datetime.fromtimestamp(self._wall(), UTC)
        params = {"since": _rfc3339(self.as_of - REVOCATION_OVERLAP)} if self.as_of else None
        try:
            resp = raise_for_upstream_error(
                await self.client.get(REVOCATIONS_PATH, params=params), "accounts"
            )
            body: dict[str, Any] = resp.json()
            fresh = {item["jti"]: _parse_time(item["expires_at"]).timestamp() for item in body["revoked"]}
            as_of = _parse_time(body["as_of"]) if body.get("as_of") else started
        except Exception as exc:  # keep what we have: tokens are still checked for signature and expiry
            if self.last_error is None:
                log.warning("cannot poll the revocation list from accounts: %s", exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if self.last_error is not None:
            log.info("revocation list polled again after failures")
        now = self._wall()
        self._revoked.update(fresh)
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp > now}
        self.as_of, self.last_success, self.last_error = as_of, now, None
        return True

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.poll_seconds)

    def __len__(self) -> int:
        return len(self._revoked)

    def details(self) -> dict[str, str]:
        details = {"revoked_tokens": str(len(self._revoked))}
        if self.last_success is not None:
            details["revocations_age_s"] = f"{self._wall() - self.last_success:.0f}"
        if self.last_error:
            details["revocations_error"] = self.last_error
        return details


def identity_client(accounts_url: str) -> ServiceClient:
    """The client for accounts' keys and revocation list. No breaker to speak of: its calls are few and
    rate-limited already, and a breaker opened by revocation polls while accounts was starting would
    refuse the first key fetch after accounts came up (every token answered 503 until it half-opened)."""
    return ServiceClient(
        "accounts",
        accounts_url,
        timeout=2.0,
        retries=1,
        breaker=CircuitBreaker("accounts-identity", failure_threshold=sys.maxsize),
    )


def accounts_token_verifier(
    accounts_url: str, *, min_refresh_seconds: float, poll_seconds: float
) -> tuple[TokenVerifier, RevocationList, ServiceClient]:
    """A verifier for a service's own routes; run the returned revocation list's `run` in the
    background and close the client on shutdown."""
    client = identity_client(accounts_url)
    keys = KeySet(client, min_refresh_seconds=min_refresh_seconds)
    revocations = RevocationList(client, poll_seconds=poll_seconds)

    async def is_revoked(jti: str) -> bool:
        return revocations.is_revoked(jti)

    return TokenVerifier(keys.lookup, is_revoked), revocations, client
