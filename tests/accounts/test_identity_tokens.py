"""Access tokens: verification (expiry, tampering, other keys), eviction, JWKS, revocations, signing keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import jwt
import pytest
import pytest_asyncio
from sqlalchemy import text

from services.accounts.config import AccountsSettings
from services.accounts.identity import IdentityService
from services.accounts.identity.tokens import thumbprint_kid
from services.accounts.service import LedgerService
from shared.auth import AUDIENCE, ISSUER, SigningKey
from shared.db import Database
from tests.accounts.identity_support import (
    APP,
    RFC3339,
    Customer,
    IdentityServer,
    code_flow,
    new_client,
    password_grant,
    running_identity,
    sign_up,
    whoami,
)


@pytest_asyncio.fixture(loop_scope="session")
async def server(db: Database, ledger: LedgerService) -> AsyncIterator[IdentityServer]:
    async with running_identity(db, ledger) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def customer(server: IdentityServer) -> Customer:
    return await sign_up(server.http)


async def app_token(server: IdentityServer, customer: Customer) -> str:
    r = await password_grant(server.http, customer)
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


# Verification -------------------------------------------------------------------------------------


async def test_a_missing_or_malformed_token_is_refused(server: IdentityServer) -> None:
    missing = await server.http.get("/ping/whoami")
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthorized.bad_access_token.missing"
    assert missing.json()["error"] == "invalid_token"
    assert missing.headers["www-authenticate"].startswith("Bearer")

    garbage = await whoami(server.http, "not.a.jwt")
    assert garbage.status_code == 401
    assert garbage.json()["code"] == "unauthorized.bad_access_token.malformed"


async def test_an_expired_token_is_refused(server: IdentityServer, customer: Customer) -> None:
    signer = server.identity.keys.signer
    token, _ = signer.issue(customer.user_id, APP, 3600, now=int(time.time()) - 7200)
    r = await whoami(server.http, token)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized.bad_access_token.expired"


@pytest.mark.parametrize("part", [1, 2])  # 1: the claims, 2: the signature
async def test_a_tampered_token_is_refused(server: IdentityServer, customer: Customer, part: int) -> None:
    token = await app_token(server, customer)
    pieces = token.split(".")
    middle = len(pieces[part]) // 2
    flipped = "A" if pieces[part][middle] != "A" else "B"
    pieces[part] = pieces[part][:middle] + flipped + pieces[part][middle + 1 :]
    r = await whoami(server.http, ".".join(pieces))
    assert r.status_code == 401
    assert r.json()["code"].startswith("unauthorized.bad_access_token")


async def test_a_token_signed_by_another_key_is_refused(server: IdentityServer, customer: Customer) -> None:
    stranger = SigningKey.generate()
    impostor = SigningKey(server.identity.keys.signer.kid, stranger.private_key)  # claims our kid
    for key in (stranger, impostor):
        token, _ = key.issue(customer.user_id, APP, 3600)
        r = await whoami(server.http, token)
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized.bad_access_token"


async def test_a_token_we_never_issued_is_refused_even_if_well_signed(
    server: IdentityServer, customer: Customer
) -> None:
    token, _ = server.identity.keys.signer.issue(
        customer.user_id, APP, 3600
    )  # no row: not from /oauth2/token
    r = await whoami(server.http, token)
    assert r.status_code == 401


# One active token per client and user ------------------------------------------------------------


async def test_a_new_token_evicts_the_old_one_for_the_same_client_and_user(
    server: IdentityServer, customer: Customer
) -> None:
    first = await app_token(server, customer)
    third_party = await new_client(server.identity)
    theirs = (await code_flow(server.http, third_party, customer))["access_token"]
    someone_else = await sign_up(server.http)
    their_app = await app_token(server, someone_else)

    second = await app_token(server, customer)

    evicted = await whoami(server.http, first)
    assert evicted.status_code == 401
    assert evicted.json()["code"] == "unauthorized.bad_access_token.evicted"
    for token in (second, theirs, their_app):  # other clients and other users keep theirs
        assert (await whoami(server.http, token)).status_code == 200


async def test_concurrent_sign_ins_leave_exactly_one_active_token(
    server: IdentityServer, customer: Customer, db: Database
) -> None:
    results = await asyncio.gather(*(password_grant(server.http, customer) for _ in range(5)))
    assert [r.status_code for r in results] == [200] * 5
    statuses = [(await whoami(server.http, r.json()["access_token"])).status_code for r in results]
    assert sorted(statuses) == [200, 401, 401, 401, 401]
    async with db.read() as session:
        active = (
            await session.execute(
                text("SELECT count(*) FROM accounts.access_tokens WHERE revoked_at IS NULL")
            )
        ).scalar_one()
    assert active == 1


# JWKS and the revocation list ---------------------------------------------------------------------


async def test_the_jwks_verifies_tokens_with_plain_pyjwt(server: IdentityServer, customer: Customer) -> None:
    token = await app_token(server, customer)
    r = await server.http.get("/oauth2/jwks.json")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert [k["kid"] for k in keys] == [server.identity.keys.signer.kid]
    assert {k["kty"] for k in keys} == {"OKP"} and "d" not in keys[0]  # public halves only

    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in keys if k["kid"] == kid)
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == customer.user_id and claims["client_id"] == APP
    assert claims["exp"] - claims["iat"] == AccountsSettings().access_token_seconds


async def test_revocations_list_evicted_tokens_until_they_would_have_expired(
    server: IdentityServer, customer: Customer, db: Database
) -> None:
    empty = await server.http.get("/oauth2/revocations")
    assert empty.json()["revoked"] == []

    first = await app_token(server, customer)
    await app_token(server, customer)
    first_jti = jwt.decode(first, options={"verify_signature": False})["jti"]

    r = await server.http.get("/oauth2/revocations")
    assert r.status_code == 200
    body = r.json()
    assert [e["jti"] for e in body["revoked"]] == [first_jti]
    entry = body["revoked"][0]
    assert RFC3339.match(entry["expires_at"]) and RFC3339.match(entry["revoked_at"])
    assert RFC3339.match(body["as_of"])

    later = await server.http.get("/oauth2/revocations", params={"since": body["as_of"]})
    assert later.json()["revoked"] == []
    earlier = await server.http.get("/oauth2/revocations", params={"since": "2000-01-01T00:00:00+00:00"})
    assert [e["jti"] for e in earlier.json()["revoked"]] == [first_jti]

    async with db.transaction() as session:
        await session.execute(
            text("UPDATE accounts.access_tokens SET expires_at = now() - interval '1 second' WHERE jti = :j"),
            {"j": first_jti},
        )
    gone = await server.http.get("/oauth2/revocations")
    assert gone.json()["revoked"] == []  # expired tokens fail on `exp`: the list need not carry them


@pytest.mark.parametrize("since", ["yesterday", "2025-01-01T00:00:00"])
async def test_revocations_want_an_rfc3339_time_with_a_zone(server: IdentityServer, since: str) -> None:
    r = await server.http.get("/oauth2/revocations", params={"since": since})
    assert r.status_code == 400
    assert r.json()["code"] == "bad_request.bad_param.since"


async def test_purging_forgets_only_expired_codes_and_tokens(
    server: IdentityServer, customer: Customer, db: Database
) -> None:
    await app_token(server, customer)
    current = await app_token(server, customer)
    async with db.transaction() as session:
        await session.execute(
            text(
                "UPDATE accounts.access_tokens SET expires_at = now() - interval '2 days'"
                " WHERE revoked_at IS NOT NULL"
            )
        )
    assert await server.identity.purge_expired() == 1
    assert (await whoami(server.http, current)).status_code == 200


# Signing keys -------------------------------------------------------------------------------------


async def test_replicas_starting_together_agree_on_one_key(
    db: Database, ledger: LedgerService, server: IdentityServer, customer: Customer
) -> None:
    async with db.transaction() as session:
        await session.execute(text("DELETE FROM accounts.signing_keys"))
    replicas = [IdentityService(db, ledger, AccountsSettings()) for _ in range(4)]
    await asyncio.gather(*(r.start() for r in replicas))

    assert len({r.keys.signer.kid for r in replicas}) == 1
    async with db.read() as session:
        assert (await session.execute(text("SELECT count(*) FROM accounts.signing_keys"))).scalar_one() == 1
    # A token one replica issues verifies on another.
    token, jti = replicas[0].keys.signer.issue(customer.user_id, APP, 60)
    async with db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO accounts.access_tokens (jti, grant_id, client_id, user_id, expires_at)"
                " VALUES (:jti, 'grant_x', :client, :user, now() + interval '1 minute')"
            ),
            {"jti": jti, "client": APP, "user": customer.user_id},
        )
    identity = await replicas[3].verifier().verify(token)
    assert identity.user_id == customer.user_id


async def test_a_configured_key_signs_and_is_published(
    db: Database, ledger: LedgerService, server: IdentityServer, customer: Customer
) -> None:
    key = SigningKey.generate()
    configured = AccountsSettings(signing_key_pem=key.private_pem())
    async with running_identity(db, ledger, configured) as other:
        assert other.identity.keys.signer.kid == thumbprint_kid(key)
        published = (await other.http.get("/oauth2/jwks.json")).json()["keys"]
        assert [k["x"] for k in published] == [key.public_jwk()["x"]]
        token = (await password_grant(other.http, customer)).json()["access_token"]
        assert jwt.get_unverified_header(token)["kid"] == thumbprint_kid(key)
        assert (await whoami(other.http, token)).status_code == 200
    # The database key (the first server's) is another key: its server refuses the configured one's tokens.
    assert (await whoami(server.http, token)).status_code == 401


def test_a_configured_key_has_the_same_kid_everywhere() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_pem("anything", key.private_pem())
    assert thumbprint_kid(key) == thumbprint_kid(again) != thumbprint_kid(SigningKey.generate())


async def test_the_service_refuses_to_work_before_start(db: Database, ledger: LedgerService) -> None:
    identity = IdentityService(db, ledger, AccountsSettings())
    with pytest.raises(RuntimeError, match="start"):
        identity.jwks()
