"""Helpers for the identity tests: the identity routes on a real socket, and a client's OAuth2 steps."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from services.accounts.config import AccountsSettings
from services.accounts.identity import IdentityService, identity_routers
from services.accounts.service import LedgerService
from shared.db import Database
from shared.web import create_app
from tests.support.serving import Served

APP = "oauthclient_mondo_app"  # the first-party client the migration seeds
CALLBACK = "https://thirdparty.example/callback"
PASSWORD = "correct horse battery"


@dataclass
class IdentityServer:
    url: str
    identity: IdentityService
    http: httpx.AsyncClient


@asynccontextmanager
async def running_identity(
    db: Database, ledger: LedgerService, settings: AccountsSettings | None = None
) -> AsyncIterator[IdentityServer]:
    """What services/accounts/app.py does for identity: start (keys), routes, the verifier; on uvicorn."""
    identity = IdentityService(db, ledger, settings or AccountsSettings())
    await identity.start()
    app = create_app("accounts", routers=identity_routers(identity))
    app.state.token_verifier = identity.verifier()
    async with (
        Served(app, log_level="warning") as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as http,
    ):
        yield IdentityServer(served.url, identity, http)


@dataclass(frozen=True)
class Customer:
    user_id: str
    account_id: str
    email: str
    password: str


async def sign_up(
    http: httpx.AsyncClient, *, email: str | None = None, name: str = "Ada Lovelace"
) -> Customer:
    email = email or f"ada+{secrets.token_hex(4)}@example.com"
    r = await http.post("/users", data={"email": email, "password": PASSWORD, "name": name})
    assert r.status_code == 201, r.text
    body = r.json()
    return Customer(body["user"]["id"], body["account"]["id"], email, PASSWORD)


@dataclass(frozen=True)
class Client:
    id: str
    secret: str | None
    redirect_uri: str = CALLBACK

    def credentials(self) -> dict[str, str]:
        return {"client_id": self.id, **({"client_secret": self.secret} if self.secret else {})}


async def new_client(
    identity: IdentityService, *, confidential: bool = True, name: str = "Budgetly"
) -> Client:
    client, secret = await identity.create_client(name, [CALLBACK], confidential=confidential)
    return Client(client.id, secret)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(http: httpx.AsyncClient, client: Client, customer: Customer, state: str = "st4te") -> str:
    """Sign in on the authorization page as the customer; return the code the client gets back."""
    form = {
        "client_id": client.id,
        "redirect_uri": client.redirect_uri,
        "response_type": "code",
        "state": state,
        "email": customer.email,
        "password": customer.password,
    }
    r = await http.post("/oauth2/authorize", data=form)
    assert r.status_code == 302, r.text
    params = query_of(r.headers["location"])
    assert params["state"] == state
    return params["code"]


async def exchange(http: httpx.AsyncClient, client: Client, code: str, **overrides: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "redirect_uri": client.redirect_uri, "code": code}
    return await http.post("/oauth2/token", data={**form, **client.credentials(), **overrides})


async def code_flow(http: httpx.AsyncClient, client: Client, customer: Customer) -> dict[str, Any]:
    r = await exchange(http, client, await authorize(http, client, customer))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def password_grant(http: httpx.AsyncClient, customer: Customer, client_id: str = APP) -> httpx.Response:
    form = {"grant_type": "password", "client_id": client_id, "username": customer.email}
    return await http.post("/oauth2/token", data={**form, "password": customer.password})


async def whoami(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get("/ping/whoami", headers={"Authorization": f"Bearer {token}"})


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
