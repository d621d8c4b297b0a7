"""Identity at the edge: access tokens verified locally (keys and revocations from
shared.remote_auth), remembered while valid, and the card network's key."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

from shared.auth import Identity, TokenVerifier, bad_token
from shared.errors import BankError
from shared.health import Checker
from shared.remote_auth import KeySet, RevocationList

log = logging.getLogger("gateway.identity")


class EdgeIdentity:
    """Who is calling: a user (access token) or the card network (x-network-key).

    A verified token is remembered (by its exact text, until it expires or the keys change), so an
    app's requests pay for one signature check, not one each; revocation is checked every time."""

    def __init__(
        self,
        keys: KeySet,
        revocations: RevocationList,
        network_key: str,
        *,
        cache_size: int = 10_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self._network_key = network_key.encode()
        self._cache_size = cache_size
        self._wall = wall_clock
        self._verified: dict[str, tuple[Identity, int]] = {}  # token -> (identity, keys.version)

        async def is_revoked(jti: str) -> bool:
            return revocations.is_revoked(jti)

        self.verifier = TokenVerifier(keys.lookup, is_revoked)

    async def user(self, authorization: str | None) -> Identity:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise bad_token("missing", "an access token is required: Authorization: Bearer <token>")
        cached = self._verified.get(token)
        if cached is not None:
            identity, version = cached
            if version == self.keys.version and self._wall() < identity.expires_at:
                if self.revocations.is_revoked(identity.token_id):
                    raise bad_token("evicted", "the access token has been replaced by a newer one")
                return identity
            del self._verified[token]
        identity = await self.verifier.verify(token)
        if self._verified and len(self._verified) >= self._cache_size:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (identity, self.keys.version)
        return identity

    def network(self, key: str | None, authorization: str | None = None) -> None:
        """The card network's key, in `x-network-key` (or as `Authorization: Bearer <key>`, the form
        cards itself accepts when called directly). A user's access token is not a network key."""
        if key is None and authorization:
            scheme, _, bearer = authorization.partition(" ")
            key = bearer.strip() if scheme.lower() == "bearer" else None
        if not hmac.compare_digest((key or "").encode(), self._network_key):
            raise BankError(
                "unauthorized.bad_network_key",
                "the card network interface needs the network's key in the x-network-key header",
            )

    def checker(self) -> Checker:
        """Readiness never fails on accounts being away (the card network path does not need it);
        the details say whether tokens can be checked and how fresh the revocation list is."""

        async def check() -> tuple[str | None, dict[str, str]]:
            return None, {**self.keys.details(), **self.revocations.details()}

        return check
