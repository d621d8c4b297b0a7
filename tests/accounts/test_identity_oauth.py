"""OAuth2 as Mondo had it, over HTTP: the sign-in page, the code exchange, refresh, the password grant."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import text

from services.accounts.service import LedgerService
from shared.db import Database
from tests.accounts.identity_support import (
    APP,
    CALLBACK,
    Client,
    Customer,
    IdentityServer,
    authorize,
    code_flow,
    exchange,
    new_client,
    password_grant,
    query_of,
    running_identity,
    sign_up,
    whoami,
)

TOKEN_FIELDS = {"access_token", "client_id", "expires_in", "refresh_token", "token_type", "user_id"}


@pytest_asyncio.fixture(loop_scope="session")
async def server(db: Database, ledger: LedgerService) -> AsyncIterator[IdentityServer]:
    async with running_identity(db, ledger) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def customer(server: IdentityServer) -> Customer:
    return await sign_up(server.http)


@pytest_asyncio.fixture(loop_scope="session")
async def client(server: IdentityServer) -> Client:
    return await new_client(server.identity, confidential=True)


# The authorization page ---------------------------------------------------------------------------


async def test_the_authorization_code_flow_end_to_end(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    http = server.http
    params = {"client_id": client.id, "redirect_uri": CALLBACK, "response_type": "code", "state": "xyz-123"}
    page = await http.get("/oauth2/authorize", params=params)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    assert "Budgetly" in page.text
    for name, value in params.items():
        assert f'name="{name}" value="{value}"' in page.text

    signed_in = await http.post(
        "/oauth2/authorize", data={**params, "email": customer.email, "password": customer.password}
    )
    assert signed_in.status_code == 302
    location = signed_in.headers["location"]
    assert location.startswith(CALLBACK + "?")
    back = query_of(location)
    assert back["state"] == "xyz-123" and back["code"]

    r = await exchange(http, client, back["code"])
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    grant = r.json()
    assert set(grant) == TOKEN_FIELDS
    assert grant["token_type"] == "Bearer"
    assert grant["client_id"] == client.id and grant["user_id"] == customer.user_id
    assert grant["expires_in"] == 21_600

    me = await whoami(http, grant["access_token"])
    assert me.status_code == 200
    assert me.json() == {"authenticated": True, "client_id": client.id, "user_id": customer.user_id}


async def test_the_page_escapes_what_the_request_carries(server: IdentityServer, client: Client) -> None:
    evil = '"><script>alert(1)</script>'
    params = {"client_id": client.id, "redirect_uri": CALLBACK, "response_type": "code", "state": evil}
    page = await server.http.get("/oauth2/authorize", params=params)
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


@pytest.mark.parametrize(
    ("client_id", "redirect_uri"),
    [
        ("oauthclient_nope", CALLBACK),
        ("", CALLBACK),
        (None, "https://attacker.example/steal"),
        (None, CALLBACK + "/extra"),
        (None, ""),
    ],
)
async def test_an_unknown_client_or_unregistered_redirect_is_never_redirected_to(
    server: IdentityServer, client: Client, customer: Customer, client_id: str | None, redirect_uri: str
) -> None:
    params = {
        "client_id": client.id if client_id is None else client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "state": "s",
    }
    page = await server.http.get("/oauth2/authorize", params=params)
    post = await server.http.post(
        "/oauth2/authorize", data={**params, "email": customer.email, "password": customer.password}
    )
    for r in (page, post):
        assert r.status_code == 400
        assert "location" not in r.headers
        assert r.headers["content-type"].startswith("text/html")


async def test_a_wrong_response_type_goes_back_to_the_client_with_an_error(
    server: IdentityServer, client: Client
) -> None:
    params = {"client_id": client.id, "redirect_uri": CALLBACK, "response_type": "token", "state": "s1"}
    r = await server.http.get("/oauth2/authorize", params=params)
    assert r.status_code == 302
    assert query_of(r.headers["location"]) == {"error": "unsupported_response_type", "state": "s1"}


async def test_wrong_credentials_show_the_form_again(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    form = {"client_id": client.id, "redirect_uri": CALLBACK, "response_type": "code", "state": "s"}
    for email, password in [(customer.email, "wrong password"), ("nobody@example.com", customer.password)]:
        r = await server.http.post("/oauth2/authorize", data={**form, "email": email, "password": password})
        assert r.status_code == 401
        assert "location" not in r.headers
        assert "wrong email or password" in r.text
        assert f'value="{email}"' in r.text  # the email is kept, the password never echoed
        assert password not in r.text


async def test_the_redirect_keeps_the_registered_uris_own_query(
    server: IdentityServer, customer: Customer
) -> None:
    uri = "https://thirdparty.example/cb?tenant=7"
    registered, secret = await server.identity.create_client("Q", [uri], confidential=True)
    code = await authorize(server.http, Client(registered.id, secret, uri), customer, state="abc")
    r = await exchange(server.http, Client(registered.id, secret, uri), code)
    assert r.status_code == 200, r.text


# The code exchange --------------------------------------------------------------------------------


async def test_the_redirect_uri_must_match_and_a_failed_attempt_burns_the_code(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    code = await authorize(server.http, client, customer)
    wrong = await exchange(server.http, client, code, redirect_uri="https://thirdparty.example/other")
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "unauthorized.bad_authorization_code.redirect_uri_mismatch"
    assert wrong.json()["error"] == "invalid_grant"

    right = await exchange(server.http, client, code)
    assert right.status_code == 401
    assert right.json()["code"] == "unauthorized.bad_authorization_code.used"


async def test_a_reused_code_is_refused_and_revokes_what_it_bought(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    code = await authorize(server.http, client, customer)
    first = await exchange(server.http, client, code)
    assert first.status_code == 200
    tokens = first.json()

    again = await exchange(server.http, client, code)
    assert again.status_code == 401
    assert again.json()["code"] == "unauthorized.bad_authorization_code.used"

    me = await whoami(server.http, tokens["access_token"])
    assert me.status_code == 401
    assert me.json()["code"] == "unauthorized.bad_access_token.evicted"
    refreshed = await server.http.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            **client.credentials(),
        },
    )
    assert refreshed.status_code == 401
    assert refreshed.json()["code"] == "unauthorized.bad_refresh_token.revoked"


async def test_an_expired_code_is_refused(
    server: IdentityServer, client: Client, customer: Customer, db: Database
) -> None:
    code = await authorize(server.http, client, customer)
    async with db.transaction() as session:
        await session.execute(text("UPDATE accounts.auth_codes SET expires_at = now() - interval '1 second'"))
    r = await exchange(server.http, client, code)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized.bad_authorization_code.expired"


async def test_codes_are_stored_hashed_and_only_for_their_client(
    server: IdentityServer, client: Client, customer: Customer, db: Database
) -> None:
    code = await authorize(server.http, client, customer)
    async with db.read() as session:
        stored = (await session.execute(text("SELECT code_hash FROM accounts.auth_codes"))).scalars().all()
    assert code not in stored and len(stored) == 1

    other = await new_client(server.identity)
    stolen = await exchange(server.http, other, code)
    assert stolen.status_code == 401
    assert stolen.json()["code"] == "unauthorized.bad_authorization_code"
    assert (await exchange(server.http, client, code)).status_code == 200  # still good for its client

    garbage = await exchange(server.http, client, "not-a-code")
    assert garbage.json()["code"] == "unauthorized.bad_authorization_code"


@pytest.mark.parametrize("secret", ["wrong-secret", None])
async def test_a_confidential_client_must_prove_its_secret(
    server: IdentityServer, client: Client, customer: Customer, secret: str | None
) -> None:
    code = await authorize(server.http, client, customer)
    r = await exchange(server.http, Client(client.id, secret), code)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized.bad_client_credentials"
    assert r.json()["error"] == "invalid_client"
    assert (
        await exchange(server.http, client, code)
    ).status_code == 200  # a failed client auth burns nothing


async def test_client_credentials_may_come_as_http_basic(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    code = await authorize(server.http, client, customer)
    basic = base64.b64encode(f"{client.id}:{client.secret}".encode()).decode()
    r = await server.http.post(
        "/oauth2/token",
        data={"grant_type": "authorization_code", "redirect_uri": CALLBACK, "code": code},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert r.status_code == 200, r.text


async def test_a_public_client_gets_no_refresh_token(server: IdentityServer, customer: Customer) -> None:
    public = await new_client(server.identity, confidential=False)
    grant = await code_flow(server.http, public, customer)
    assert set(grant) == TOKEN_FIELDS - {"refresh_token"}
    assert (await whoami(server.http, grant["access_token"])).status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "code", "error"),
    [
        ({}, 400, "bad_request.missing_param", "invalid_request"),
        (
            {"grant_type": "client_credentials"},
            400,
            "bad_request.unsupported_grant_type",
            "unsupported_grant_type",
        ),
        ({"grant_type": "authorization_code"}, 400, "bad_request.missing_param", "invalid_request"),
        (
            {
                "grant_type": "authorization_code",
                "client_id": "oauthclient_nope",
                "code": "c",
                "redirect_uri": "u",
            },
            401,
            "unauthorized.bad_client_credentials",
            "invalid_client",
        ),
    ],
)
async def test_malformed_token_requests_get_oauth_errors(
    server: IdentityServer, form: dict[str, str], status: int, code: str, error: str
) -> None:
    r = await server.http.post("/oauth2/token", data=form)
    assert r.status_code == status
    assert r.json()["code"] == code
    assert r.json()["error"] == error


# Refresh ------------------------------------------------------------------------------------------


async def test_refreshing_is_one_time_and_evicts_the_old_access_token(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    first = await code_flow(server.http, client, customer)
    form = {"grant_type": "refresh_token", **client.credentials()}

    r = await server.http.post("/oauth2/token", data={**form, "refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert set(second) == TOKEN_FIELDS
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert (await whoami(server.http, second["access_token"])).status_code == 200
    old = await whoami(server.http, first["access_token"])
    assert old.json()["code"] == "unauthorized.bad_access_token.evicted"

    again = await server.http.post("/oauth2/token", data={**form, "refresh_token": first["refresh_token"]})
    assert again.status_code == 401
    assert again.json()["code"] == "unauthorized.bad_refresh_token.used"
    assert again.json()["error"] == "invalid_grant"
    # A replayed refresh token means two parties hold the grant: both lose it.
    assert (await whoami(server.http, second["access_token"])).status_code == 401
    third = await server.http.post("/oauth2/token", data={**form, "refresh_token": second["refresh_token"]})
    assert third.json()["code"] == "unauthorized.bad_refresh_token.revoked"


async def test_a_refresh_token_works_only_for_its_client_and_until_it_expires(
    server: IdentityServer, client: Client, customer: Customer, db: Database
) -> None:
    grant = await code_flow(server.http, client, customer)
    other = await new_client(server.identity)
    form = {"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]}

    stolen = await server.http.post("/oauth2/token", data={**form, **other.credentials()})
    assert stolen.json()["code"] == "unauthorized.bad_refresh_token"

    async with db.transaction() as session:
        await session.execute(
            text("UPDATE accounts.refresh_tokens SET expires_at = now() - interval '1 second'")
        )
    expired = await server.http.post("/oauth2/token", data={**form, **client.credentials()})
    assert expired.status_code == 401
    assert expired.json()["code"] == "unauthorized.bad_refresh_token.expired"


# The password grant -------------------------------------------------------------------------------


async def test_the_banks_own_app_signs_in_with_a_password(server: IdentityServer, customer: Customer) -> None:
    r = await password_grant(server.http, customer)
    assert r.status_code == 200, r.text
    grant = r.json()
    assert set(grant) == TOKEN_FIELDS
    assert grant["client_id"] == APP and grant["user_id"] == customer.user_id
    me = await whoami(server.http, grant["access_token"])
    assert me.json() == {"authenticated": True, "client_id": APP, "user_id": customer.user_id}

    refreshed = await server.http.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "client_id": APP, "refresh_token": grant["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_the_password_grant_is_only_for_the_banks_own_app(
    server: IdentityServer, client: Client, customer: Customer
) -> None:
    form = {"grant_type": "password", "username": customer.email, "password": customer.password}
    confidential = await server.http.post("/oauth2/token", data={**form, **client.credentials()})
    assert confidential.status_code == 403
    assert confidential.json()["code"] == "forbidden.grant_type_not_allowed"
    assert confidential.json()["error"] == "unauthorized_client"

    public = await new_client(server.identity, confidential=False)
    r = await server.http.post("/oauth2/token", data={**form, "client_id": public.id})
    assert r.status_code == 403

    wrong_secret = await server.http.post(
        "/oauth2/token", data={**form, "client_id": client.id, "client_secret": "nope"}
    )
    assert wrong_secret.status_code == 401


async def test_the_password_grant_refuses_wrong_credentials(
    server: IdentityServer, customer: Customer
) -> None:
    wrong = Customer(customer.user_id, customer.account_id, customer.email, "not the password")
    r = await password_grant(server.http, wrong)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized.bad_user_credentials"
    assert r.json()["error"] == "invalid_grant"
