"""Identity's use cases: sign-up, OAuth2 (authorization code, refresh, password for the bank's app), keys.

Each public method is an edge: it opens the one transaction it commits.
Most refusals raise, rolling back. A refusal that must leave a mark (a
replayed code or refresh token revokes its whole grant; a code is burnt by a
failed exchange) is returned from the transaction, which commits, and raised
after it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts.config import AccountsSettings
from services.accounts.identity import repository as repo
from services.accounts.identity import rules, tokens
from services.accounts.identity.models import AccessToken, AuthCode, OAuthClient
from services.accounts.identity.passwords import check_password_async, hash_password_async
from services.accounts.models import Account, User
from shared.auth import TokenVerifier
from shared.db import Database
from shared.errors import BankError, bad_request, conflict
from shared.ids import new_id

log = logging.getLogger("services.accounts.identity")

GRANT_TYPES = ("authorization_code", "refresh_token", "password")


class AccountOpener(Protocol):
    """The part of the ledger sign-up needs (services.accounts.service.LedgerService)."""

    async def open_account(
        self, session: AsyncSession, user_id: str, description: str = "Mondo prepaid account"
    ) -> Account: ...


@dataclass(frozen=True)
class SignedUp:
    user: User
    account: Account


@dataclass(frozen=True)
class TokenGrant:
    """The token response, exactly Monzo's fields (refresh_token only for clients that get one)."""

    access_token: str
    client_id: str
    expires_in: int
    refresh_token: str | None
    user_id: str
    token_type: str = "Bearer"


@dataclass(frozen=True)
class TokenRequest:
    """The form of POST /oauth2/token; which fields matter depends on grant_type."""

    grant_type: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    redirect_uri: str | None = None
    code: str | None = None
    refresh_token: str | None = None
    username: str | None = None
    password: str | None = None


def oauth_error(code: str, message: str, error: str) -> BankError:
    return BankError(code, message, extra={"error": error})


def missing(param: str) -> BankError:
    return BankError(
        "bad_request.missing_param",
        f"{param} is required",
        params={"param": param},
        extra={"error": "invalid_request"},
    )


def bad_client() -> BankError:
    return oauth_error(
        "unauthorized.bad_client_credentials", "unknown client or wrong client secret", "invalid_client"
    )


def bad_code(detail: str, message: str) -> BankError:
    code = "unauthorized.bad_authorization_code" + (f".{detail}" if detail else "")
    return oauth_error(code, message, "invalid_grant")


def bad_refresh(detail: str, message: str) -> BankError:
    code = "unauthorized.bad_refresh_token" + (f".{detail}" if detail else "")
    return oauth_error(code, message, "invalid_grant")


def now() -> datetime:
    return datetime.now(UTC)


class IdentityService:
    def __init__(self, db: Database, ledger: AccountOpener, settings: AccountsSettings) -> None:
        self.db = db
        self.ledger = ledger
        self.settings = settings
        self._keys: tokens.KeyRing | None = None

    # Keys and verification --------------------------------------------------------------------

    async def start(self) -> None:
        """Load (or, the first time ever, create) the signing keys. Call before serving."""
        self._keys = await tokens.load_key_ring(self.db, self.settings)
        log.info("signing with key %s", self._keys.signer.kid)

    @property
    def keys(self) -> tokens.KeyRing:
        if self._keys is None:
            raise RuntimeError("IdentityService.start() has not run")
        return self._keys

    def verifier(self) -> TokenVerifier:
        """Verifies access tokens for accounts' own routes: signature, expiry, and the revocation table."""

        async def public_key(kid: str) -> Ed25519PublicKey | None:
            return await self.keys.public_key(kid)

        async def revoked(jti: str) -> bool:
            return await tokens.is_revoked(self.db, jti)

        return TokenVerifier(public_key, is_revoked=revoked)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self.keys.jwks()

    async def revocations(self, since: datetime | None) -> tuple[list[AccessToken], datetime]:
        moment = now()
        async with self.db.read() as session:
            revoked = await repo.revoked_since(session, since, moment)
        return list(revoked), moment

    async def purge_expired(self, grace: timedelta = timedelta(days=1)) -> int:
        async with self.db.transaction() as session:
            return await repo.purge_expired(session, now() - grace)

    async def housekeeping(self, every_seconds: float = 3600.0) -> None:
        """A background job: forget expired codes and tokens, so the token tables stay small."""
        while True:
            try:
                purged = await self.purge_expired()
                if purged:
                    log.info("purged %d expired codes and tokens", purged)
            except Exception:
                log.exception("purging expired tokens failed; will retry")
            await asyncio.sleep(every_seconds)

    # Sign-up ----------------------------------------------------------------------------------

    async def sign_up(self, email: str, password: str, name: str) -> SignedUp:
        email, name = rules.normalise_email(email), name.strip()
        rules.check_sign_up(email, password, name)
        password_hash = await hash_password_async(password)
        async with self.db.transaction() as session:
            user = await repo.insert_user(
                session, user_id=new_id("user"), email=email, name=name, password_hash=password_hash
            )
            if user is None:
                raise conflict("email_taken", "an account with that email already exists")
            account = await self.ledger.open_account(session, user.id)
        return SignedUp(user, account)

    # Clients ----------------------------------------------------------------------------------

    async def create_client(
        self, name: str, redirect_uris: list[str], *, confidential: bool
    ) -> tuple[OAuthClient, str | None]:
        """A third-party client, and its secret (confidential clients only): shown once, stored hashed."""
        if not name.strip():
            raise bad_request("bad_param.name", "a client needs a name", param="name")
        if not redirect_uris:
            raise bad_request(
                "missing_param", "a client needs at least one redirect URI", param="redirect_uri"
            )
        uris = [rules.check_redirect_uri(u) for u in redirect_uris]
        secret = tokens.new_secret() if confidential else None
        client = OAuthClient(
            id=new_id("oauthclient"),
            name=name.strip(),
            secret_hash=tokens.digest(secret) if secret else None,
            redirect_uris=uris,
            confidential=confidential,
            first_party=False,
            created=now(),
        )
        async with self.db.transaction() as session:
            session.add(client)
        return client, secret

    # Authorization (the browser part) ---------------------------------------------------------

    async def authorization_client(self, client_id: str, redirect_uri: str) -> OAuthClient:
        """The client asking for access, if it is known and the redirect URI is one it registered."""
        async with self.db.read() as session:
            return await self._registered(session, client_id, redirect_uri)

    async def authorize(self, client_id: str, redirect_uri: str, email: str, password: str) -> str:
        """Check the user's credentials; return a single-use authorization code for the client."""
        async with self.db.read() as session:
            client = await self._registered(session, client_id, redirect_uri)
        user = await self._check_user(email, password)
        code, moment = tokens.new_secret(), now()
        async with self.db.transaction() as session:
            session.add(
                AuthCode(
                    code_hash=tokens.digest(code),
                    grant_id=new_id("grant"),
                    client_id=client.id,
                    user_id=user.id,
                    redirect_uri=redirect_uri,
                    created=moment,
                    expires_at=moment + timedelta(seconds=self.settings.auth_code_seconds),
                )
            )
        return code

    async def _registered(self, session: AsyncSession, client_id: str, redirect_uri: str) -> OAuthClient:
        client = await repo.get_client(session, client_id) if client_id else None
        if client is None:
            raise bad_request("unknown_client", "there is no app with that client_id", param="client_id")
        if redirect_uri not in client.redirect_uris:
            raise bad_request(
                "bad_redirect_uri", "redirect_uri is not registered for this app", param="redirect_uri"
            )
        return client

    async def _check_user(self, email: str, password: str) -> User:
        async with self.db.read() as session:
            user = await repo.user_by_email(session, rules.normalise_email(email))
        ok = await check_password_async(password, user.password_hash if user else None)
        if user is None or not ok:
            raise BankError("unauthorized.bad_user_credentials", "wrong email or password")
        return user

    # The token endpoint -----------------------------------------------------------------------

    async def token(self, request: TokenRequest) -> TokenGrant:
        grant_type = request.grant_type or ""
        if not grant_type:
            raise missing("grant_type")
        if grant_type not in GRANT_TYPES:
            raise oauth_error(
                "bad_request.unsupported_grant_type",
                f"grant_type must be one of {', '.join(GRANT_TYPES)}",
                "unsupported_grant_type",
            )
        if not request.client_id:
            raise missing("client_id")
        if grant_type == "authorization_code":
            return await self._exchange_code(request)
        if grant_type == "refresh_token":
            return await self._refresh(request)
        return await self._password(request)

    async def _client(self, session: AsyncSession, client_id: str, secret: str | None) -> OAuthClient:
        client = await repo.get_client(session, client_id)
        if client is None:
            raise bad_client()
        if client.secret_hash is not None and not (
            secret and tokens.secret_matches(secret, client.secret_hash)
        ):
            raise bad_client()
        return client

    async def _exchange_code(self, request: TokenRequest) -> TokenGrant:
        code, redirect_uri = request.code, request.redirect_uri
        if not code:
            raise missing("code")
        if not redirect_uri:
            raise missing("redirect_uri")
        assert request.client_id
        async with self.db.transaction() as session:
            client = await self._client(session, request.client_id, request.client_secret)
            outcome = await self._redeem_code(session, client, code, redirect_uri)
        if isinstance(outcome, BankError):
            raise outcome
        return outcome

    async def _redeem_code(
        self, session: AsyncSession, client: OAuthClient, code: str, redirect_uri: str
    ) -> TokenGrant | BankError:
        moment = now()
        row = await repo.lock_auth_code(session, tokens.digest(code))
        if row is None or row.client_id != client.id:
            return bad_code("", "unknown authorization code")
        if row.used_at is not None:
            # RFC 6749 §4.1.2: a replayed code may mean it was stolen; revoke what it was exchanged for.
            await repo.revoke_grant(session, row.grant_id, moment)
            log.warning("authorization code replayed; grant %s revoked", row.grant_id)
            return bad_code("used", "the authorization code has already been used")
        row.used_at = moment  # any attempt by its own client burns it
        if row.expires_at <= moment:
            return bad_code("expired", "the authorization code has expired")
        if row.redirect_uri != redirect_uri:
            return bad_code("redirect_uri_mismatch", "redirect_uri does not match the authorization request")
        return await self._grant(session, row.user_id, client, row.grant_id, moment)

    async def _refresh(self, request: TokenRequest) -> TokenGrant:
        if not request.refresh_token:
            raise missing("refresh_token")
        assert request.client_id
        async with self.db.transaction() as session:
            client = await self._client(session, request.client_id, request.client_secret)
            outcome = await self._redeem_refresh(session, client, request.refresh_token)
        if isinstance(outcome, BankError):
            raise outcome
        return outcome

    async def _redeem_refresh(
        self, session: AsyncSession, client: OAuthClient, refresh_token: str
    ) -> TokenGrant | BankError:
        moment = now()
        row = await repo.lock_refresh_token(session, tokens.digest(refresh_token))
        if row is None or row.client_id != client.id:
            return bad_refresh("", "unknown refresh token")
        if row.revoked_at is not None:
            return bad_refresh("revoked", "the refresh token has been revoked")
        if row.used_at is not None:
            # Refreshing is one-time: a second use means two parties hold the token. Stop both.
            await repo.revoke_grant(session, row.grant_id, moment)
            log.warning("refresh token replayed; grant %s revoked", row.grant_id)
            return bad_refresh("used", "the refresh token has already been used")
        if row.expires_at <= moment:
            return bad_refresh("expired", "the refresh token has expired; sign in again")
        row.used_at = moment
        return await self._grant(session, row.user_id, client, row.grant_id, moment)

    async def _password(self, request: TokenRequest) -> TokenGrant:
        assert request.client_id
        async with self.db.read() as session:
            client = await self._client(session, request.client_id, request.client_secret)
        if not (client.first_party and client.id == self.settings.first_party_client_id):
            raise oauth_error(
                "forbidden.grant_type_not_allowed",
                "the password grant is only for the bank's own app; use the authorization code flow",
                "unauthorized_client",
            )
        if not request.username:
            raise missing("username")
        if not request.password:
            raise missing("password")
        try:
            user = await self._check_user(request.username, request.password)
        except BankError as exc:
            raise oauth_error(exc.code, exc.message, "invalid_grant") from None
        async with self.db.transaction() as session:
            return await self._grant(session, user.id, client, new_id("grant"), now())

    async def _grant(
        self, session: AsyncSession, user_id: str, client: OAuthClient, grant_id: str, moment: datetime
    ) -> TokenGrant:
        issued = await tokens.issue(
            session, self.keys, self.settings, user_id=user_id, client=client, grant_id=grant_id, now=moment
        )
        return TokenGrant(issued.access_token, client.id, issued.expires_in, issued.refresh_token, user_id)
