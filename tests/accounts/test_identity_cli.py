"""`bank clients create` and `bank demo`, run as the operator would: a separate process on the database."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator

import pytest_asyncio

from services.accounts.service import LedgerService
from shared.db import Database
from tests.accounts.identity_support import (
    Client,
    IdentityServer,
    code_flow,
    running_identity,
    sign_up,
    whoami,
)


@pytest_asyncio.fixture(loop_scope="session")
async def server(db: Database, ledger: LedgerService) -> AsyncIterator[IdentityServer]:
    async with running_identity(db, ledger) as running:
        yield running


async def bank(database_url: str, *args: str) -> tuple[int, str, str]:
    """`bank <args>` for the commands bank/accounts_cli.py provides, against the test database."""
    env = {**os.environ, "BANK_DATABASE_URL": database_url, "BANK_GATEWAY_URL": "http://127.0.0.1:18000"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bank.accounts_cli", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def field(output: str, name: str) -> str:
    match = re.search(rf"^\s*{name}:?\s+(\S+)\s*$", output, re.MULTILINE)
    assert match, f"no {name} in {output!r}"
    return match.group(1)


async def test_a_client_created_on_the_command_line_completes_a_code_flow(
    server: IdentityServer, database_url: str
) -> None:
    uri = "https://budgetly.example/oauth/callback"
    code, out, err = await bank(
        database_url, "clients", "create", "--name", "Budgetly", "--redirect-uri", uri,
        "--redirect-uri", "https://budgetly.example/other", "--confidential",
    )  # fmt: skip
    assert code == 0, err
    client = Client(field(out, "client_id"), field(out, "client_secret"), uri)
    assert client.id.startswith("oauthclient_")
    assert "shown only now" in err

    customer = await sign_up(server.http)
    grant = await code_flow(server.http, client, customer)
    me = await whoami(server.http, grant["access_token"])
    assert me.json() == {"authenticated": True, "client_id": client.id, "user_id": customer.user_id}


async def test_a_public_client_has_no_secret(server: IdentityServer, database_url: str) -> None:
    code, out, _ = await bank(
        database_url, "clients", "create", "--name", "Pocket", "--redirect-uri", "pocket://auth"
    )
    assert code == 0
    assert "client_secret" not in out
    customer = await sign_up(server.http)
    client = Client(field(out, "client_id"), None, "pocket://auth")
    assert "refresh_token" not in await code_flow(server.http, client, customer)


async def test_a_bad_redirect_uri_is_refused(database_url: str, db: Database) -> None:
    code, out, err = await bank(
        database_url, "clients", "create", "--name", "Bad", "--redirect-uri", "https://x.example/#frag"
    )
    assert code == 2
    assert "fragment" in err and "client_id" not in out


async def test_demo_prints_a_customer_whose_token_works(server: IdentityServer, database_url: str) -> None:
    code, out, err = await bank(database_url, "demo")
    assert code == 0, err
    email, password, token = field(out, "email"), field(out, "password"), field(out, "access_token")
    assert re.fullmatch(r"demo\+[0-9a-f]{8}@example\.com", email)
    assert field(out, "account_id").startswith("acc_")
    assert 'curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18000/ping/whoami' in out
    assert f"export TOKEN={token}" in out and "http://127.0.0.1:18000/accounts" in out

    me = await whoami(server.http, token)
    assert me.status_code == 200, me.text
    assert me.json()["user_id"] == field(out, "user_id")
    signed_in = await server.http.post(
        "/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": "oauthclient_mondo_app",
            "username": email,
            "password": password,
        },
    )
    assert signed_in.status_code == 200
