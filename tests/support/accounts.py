"""A stand-in for accounts as the other services read it: its public keys, its revocation list and
who owns an account. The real accounts serves these from services/accounts/identity and api.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, FastAPI

from shared.auth import SigningKey, TokenVerifier
from shared.errors import not_found
from shared.web import create_app


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class StubAccounts:
    """`GET /oauth2/jwks.json` (`key` and `extra_keys`), `GET /oauth2/revocations` (`revoked`: jti ->
    when the token expires, a datetime or epoch seconds), and with `app()` also
    `GET /internal/accounts/{id}` (`owners`: account id -> user id). Tests change the dicts as they go;
    `jwks_hits` and `revocation_polls` (each poll's `since`) count what was asked."""

    key: SigningKey = field(default_factory=SigningKey.generate)
    extra_keys: list[SigningKey] = field(default_factory=list)
    revoked: dict[str, datetime | int] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    jwks_hits: int = 0
    revocation_polls: list[str | None] = field(default_factory=list)

    def token(self, user_id: str = "user_ada", client_id: str = "oauth2client_app", **kw: Any) -> str:
        return self.key.issue(user_id, client_id, kw.pop("lifetime", 600), **kw)[0]

    def identity_router(self) -> APIRouter:
        """The identity routes alone: to add to a real accounts app, or to serve as they are."""
        api = APIRouter()

        @api.get("/oauth2/jwks.json")
        async def jwks() -> dict[str, Any]:
            self.jwks_hits += 1
            return {"keys": [k.public_jwk() for k in (self.key, *self.extra_keys)]}

        @api.get("/oauth2/revocations")
        async def revocations(since: str | None = None) -> dict[str, Any]:
            self.revocation_polls.append(since)
            stamp = _rfc3339(datetime.now(UTC))
            revoked = [
                {
                    "jti": jti,
                    "expires_at": _rfc3339(
                        exp if isinstance(exp, datetime) else datetime.fromtimestamp(exp, UTC)
                    ),
                    "revoked_at": stamp,
                }
                for jti, exp in self.revoked.items()
            ]
            return {"revoked": revoked, "as_of": stamp}

        return api

    def internal_router(self) -> APIRouter:
        api = APIRouter()

        @api.get("/internal/accounts/{account_id}")
        async def account(account_id: str) -> dict[str, Any]:
            if account_id not in self.owners:
                raise not_found("account", "no account with that id")
            return {"id": account_id, "user_id": self.owners[account_id], "currency": "GBP", "closed": False}

        return api

    def app(self) -> FastAPI:
        """A whole stand-in: identity and account owners, on the bank's app factory (its errors), and
        checking tokens with `key` as accounts does."""
        app = create_app("accounts", routers=[self.identity_router(), self.internal_router()])

        async def lookup(kid: str) -> Ed25519PublicKey | None:
            for k in (self.key, *self.extra_keys):
                if k.kid == kid:
                    return k.private_key.public_key()
            return None

        app.state.token_verifier = TokenVerifier(lookup)
        return app
