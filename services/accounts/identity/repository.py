"""Identity's queries. Receives the caller's session; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.accounts.identity.models import AccessToken, AuthCode, OAuthClient, RefreshToken, SigningKeyRow
from services.accounts.models import User

SIGNING_KEYS_LOCK = 7_263_540_101  # arbitrary, fixed: "accounts signing keys"


# Users -------------------------------------------------------------------------------------------


async def insert_user(
    session: AsyncSession, *, user_id: str, email: str, name: str, password_hash: str
) -> User | None:
    """The new user, or None when the email is taken (case-insensitively, by the unique index)."""
    statement = (
        insert(User)
        .values(id=user_id, email=email, name=name, password_hash=password_hash)
        .on_conflict_do_nothing(index_elements=[func.lower(User.email)])
        .returning(User)
    )
    return await session.scalar(statement)


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(func.lower(User.email) == email.lower()))


# Clients -----------------------------------------------------------------------------------------


async def get_client(session: AsyncSession, client_id: str) -> OAuthClient | None:
    return await session.get(OAuthClient, client_id)


# Authorization codes and refresh tokens ----------------------------------------------------------


async def lock_auth_code(session: AsyncSession, code_hash: str) -> AuthCode | None:
    return await session.scalar(select(AuthCode).where(AuthCode.code_hash == code_hash).with_for_update())


async def lock_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    return await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash).with_for_update()
    )


# Access tokens -----------------------------------------------------------------------------------


async def lock_token_pair(session: AsyncSession, user_id: str, client_id: str) -> None:
    """Serialise issuing for one (user, client) pair, so that exactly one token stays active."""
    key = f"accounts.access_tokens:{user_id}:{client_id}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


async def revoke_pair(session: AsyncSession, user_id: str, client_id: str, now: datetime) -> None:
    await session.execute(
        update(AccessToken)
        .where(
            AccessToken.user_id == user_id,
            AccessToken.client_id == client_id,
            AccessToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )


async def revoke_grant(session: AsyncSession, grant_id: str, now: datetime) -> None:
    """Every token descended from one authorization: access tokens and refresh tokens alike."""
    await session.execute(
        update(AccessToken)
        .where(AccessToken.grant_id == grant_id, AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.grant_id == grant_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def access_token_revoked(session: AsyncSession, jti: str) -> bool:
    revoked_at = await session.execute(select(AccessToken.revoked_at).where(AccessToken.jti == jti))
    row = revoked_at.first()
    return row is None or row[0] is not None


async def revoked_since(
    session: AsyncSession, since: datetime | None, now: datetime
) -> Sequence[AccessToken]:
    """Revoked tokens that would still be valid: the list a gateway keeps. Expired ones drop off."""
    query = select(AccessToken).where(AccessToken.revoked_at.is_not(None), AccessToken.expires_at > now)
    if since is not None:
        query = query.where(AccessToken.revoked_at > since)
    return (await session.scalars(query.order_by(AccessToken.revoked_at, AccessToken.jti))).all()


async def purge_expired(session: AsyncSession, before: datetime) -> int:
    """Forget what can no longer be used: expired codes and tokens (their JWTs fail on `exp` anyway)."""
    purged = 0
    for model in (AuthCode, RefreshToken, AccessToken):
        result = await session.execute(delete(model).where(model.expires_at < before))
        purged += int(getattr(result, "rowcount", 0) or 0)
    return purged


# Signing keys ------------------------------------------------------------------------------------


async def lock_signing_keys(session: AsyncSession) -> None:
    await session.execute(select(func.pg_advisory_xact_lock(SIGNING_KEYS_LOCK)))


async def active_signing_keys(session: AsyncSession) -> Sequence[SigningKeyRow]:
    """Newest first: the first one signs."""
    return (
        await session.scalars(
            select(SigningKeyRow)
            .where(SigningKeyRow.active)
            .order_by(SigningKeyRow.created.desc(), SigningKeyRow.kid)
        )
    ).all()
