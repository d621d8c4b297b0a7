"""Signing keys, opaque secrets, and issuing and revoking tokens.

Access tokens are EdDSA JWTs (shared.auth), verifiable anywhere with the JWKS.
Authorization codes, refresh tokens and client secrets are opaque random
strings; only their SHA-256 is stored (they carry 256 bits of randomness, so a
slow hash would add nothing).

Keys: `ACCOUNTS_SIGNING_KEY_PEM` when set (its kid is its RFC 7638 thumbprint,
so every replica configured with it agrees). Otherwise the first process to
start generates a key and stores it in `accounts.signing_keys` under an
advisory lock; every replica then loads the same active keys. The newest
active key signs; every active key verifies and is published in the JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts.config import AccountsSettings
from services.accounts.identity import repository as repo
from services.accounts.identity.models import AccessToken, OAuthClient, RefreshToken, SigningKeyRow
from shared.auth import SigningKey
from shared.db import Database

# An unknown kid makes a verifier reload keys from the database, at most this often.
KEY_RELOAD_SECONDS = 10.0


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)


def thumbprint_kid(key: SigningKey) -> str:
    """RFC 7638: the SHA-256 of the canonical public JWK, so a configured key has a stable kid."""
    jwk = key.public_jwk()
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":"))
    raw = hashlib.sha256(canonical.encode()).digest()
    return "key_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()[:22]


class KeyRing:
    """The signing key and the public keys that verify. Replaced whole on reload, never mutated."""

    def __init__(
        self, keys: list[SigningKey], reload: Callable[[], Awaitable[list[SigningKey]]] | None
    ) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._set(keys)
        self._reload = reload
        self._reloaded_at = time.monotonic()

    def _set(self, keys: list[SigningKey]) -> None:
        self.signer = keys[0]
        self.keys = {k.kid: k for k in keys}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.public_jwk() for k in self.keys.values()]}

    async def public_key(self, kid: str) -> Ed25519PublicKey | None:
        key = self.keys.get(kid)
        if key is None and self._reload is not None:
            if time.monotonic() - self._reloaded_at >= KEY_RELOAD_SECONDS:
                self._reloaded_at = time.monotonic()
                if keys := await self._reload():
                    self._set(keys)
                key = self.keys.get(kid)
        return key.private_key.public_key() if key else None


async def stored_keys(db: Database) -> list[SigningKey]:
    async with db.read() as session:
        rows = await repo.active_signing_keys(session)
    return [SigningKey.from_pem(r.kid, r.private_pem) for r in rows]


async def load_key_ring(db: Database, settings: AccountsSettings) -> KeyRing:
    if settings.signing_key_pem:
        configured = SigningKey.from_pem("pending", settings.signing_key_pem)
        return KeyRing([SigningKey(thumbprint_kid(configured), configured.private_key)], reload=None)
    async with db.transaction() as session:
        await repo.lock_signing_keys(session)  # concurrent first starts: one creates, the others wait
        if not await repo.active_signing_keys(session):
            key = SigningKey.generate()
            session.add(SigningKeyRow(kid=key.kid, private_pem=key.private_pem(), active=True))
    return KeyRing(await stored_keys(db), reload=lambda: stored_keys(db))


@dataclass(frozen=True)
class Issued:
    access_token: str
    jti: str
    expires_in: int
    refresh_token: str | None


def gets_refresh_tokens(client: OAuthClient) -> bool:
    """Monzo: only confidential clients get refresh tokens. The bank's own app is trusted to, too."""
    return client.confidential or client.first_party


async def issue(
    session: AsyncSession,
    keys: KeyRing,
    settings: AccountsSettings,
    *,
    user_id: str,
    client: OAuthClient,
    grant_id: str,
    now: datetime,
) -> Issued:
    """A new access token (and refresh token, if the client gets them) for the pair; older ones die."""
    await repo.lock_token_pair(session, user_id, client.id)
    await repo.revoke_pair(session, user_id, client.id, now)
    lifetime = settings.access_token_seconds
    token, jti = keys.signer.issue(user_id, client.id, lifetime, now=int(now.timestamp()))
    session.add(
        AccessToken(
            jti=jti,
            grant_id=grant_id,
            client_id=client.id,
            user_id=user_id,
            created=now,
            expires_at=datetime.fromtimestamp(int(now.timestamp()) + lifetime, UTC),
        )
    )
    refresh = None
    if gets_refresh_tokens(client):
        refresh = new_secret()
        session.add(
            RefreshToken(
                token_hash=digest(refresh),
                grant_id=grant_id,
                client_id=client.id,
                user_id=user_id,
                created=now,
                expires_at=now + timedelta(days=settings.refresh_token_days),
            )
        )
    await session.flush()
    return Issued(token, jti, lifetime, refresh)


async def is_revoked(db: Database, jti: str) -> bool:
    """A token we have no row for was not issued here (or is long expired): treated as revoked."""
    async with db.read() as session:
        return await repo.access_token_revoked(session, jti)
