"""Access tokens: EdDSA-signed JWTs issued by accounts, verified anywhere with its public keys.

Claims: iss, aud, sub (user id), client_id, jti, iat, exp; the key id is in
the header. A verifier needs only the public keys (JWKS) and, optionally, a
revocation check (Monzo's rule: a new token for the same user and client
evicts the old one). Errors are Monzo-shaped:
`{"code": "unauthorized.bad_access_token…", "message": …, "error": "invalid_token"}`.
"""

from __future__ import annotations

import base64
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Request

from shared.errors import BankError

ISSUER = "bank-accounts"
AUDIENCE = "bank-api"
ALGORITHM = "EdDSA"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    client_id: str
    token_id: str
    expires_at: int


def bad_token(detail: str, message: str) -> BankError:
    code = "unauthorized.bad_access_token" + (f".{detail}" if detail else "")
    return BankError(
        code,
        message,
        extra={"error": "invalid_token"},
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(f"key_{uuid.uuid4().hex[:12]}", Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, kid: str, pem: str) -> SigningKey:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing keys must be Ed25519")
        return cls(kid, key)

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def public_jwk(self) -> dict[str, str]:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }

    def issue(
        self, user_id: str, client_id: str, lifetime_seconds: int, *, now: int | None = None
    ) -> tuple[str, str]:
        """Return (token, jti)."""
        issued = int(time.time()) if now is None else now
        jti = f"tok_{uuid.uuid4().hex}"
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "client_id": client_id,
            "jti": jti,
            "iat": issued,
            "exp": issued + lifetime_seconds,
        }
        token = jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, jti


def public_keys_from_jwks(doc: dict[str, Any]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for jwk in doc.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
            keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_unb64url(jwk["x"]))
    return keys


KeyLookup = Callable[[str], Awaitable[Ed25519PublicKey | None]]
RevocationCheck = Callable[[str], Awaitable[bool]]


class TokenVerifier:
    """Verifies access tokens. `keys` finds a public key by kid (refreshing a JWKS cache if needed)."""

    def __init__(self, keys: KeyLookup, is_revoked: RevocationCheck | None = None, leeway: int = 5) -> None:
        self.keys = keys
        self.is_revoked = is_revoked
        self.leeway = leeway

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise bad_token("malformed", "the access token is not a valid JWT") from None
        if header.get("alg") != ALGORITHM or not isinstance(header.get("kid"), str):
            raise bad_token("malformed", "the access token was not signed by this bank")
        key = await self.keys(header["kid"])
        if key is None:
            raise bad_token("", "the access token was signed with an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise bad_token("expired", "the access token has expired; refresh it") from None
        except jwt.InvalidAudienceError:
            raise bad_token("", "the access token is not meant for this API") from None
        except jwt.PyJWTError:
            raise bad_token("", "the access token is invalid") from None
        if self.is_revoked is not None and await self.is_revoked(claims["jti"]):
            raise bad_token("evicted", "the access token has been replaced by a newer one")
        return Identity(claims["sub"], str(claims.get("client_id", "")), claims["jti"], int(claims["exp"]))


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise bad_token("missing", "an access token is required: Authorization: Bearer <token>")
    return token.strip()


async def require_identity(request: Request) -> Identity:
    """FastAPI dependency: the verified caller. The app sets `app.state.token_verifier`."""
    verifier: TokenVerifier = request.app.state.token_verifier
    return await verifier.verify(bearer_token(request))


INTERNAL_TOKEN_HEADER = "x-internal-token"


async def require_internal(request: Request) -> None:
    """FastAPI dependency for service-to-service routes. The app sets `app.state.internal_token`."""
    expected: str = request.app.state.internal_token
    given = request.headers.get(INTERNAL_TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise BankError("unauthorized.internal", "this route is for the bank's own services")
