"""`bank clients create` (a third-party OAuth client) and `bank demo` (a customer to try the API as).

Both talk to the bank's database directly (BANK_DATABASE_URL, else the embedded PostgreSQL of
`bank up`), as the accounts service would; neither needs the services to be running. `bank demo`'s
examples go through the gateway, as every client's calls do.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex

import typer

from shared.config import BankSettings, load

clients = typer.Typer(no_args_is_help=True, help="Third-party OAuth clients of the bank's API.")


@clients.command("create")
def create_client(
    name: str = typer.Option(..., "--name", help="shown to customers on the sign-in page"),
    redirect_uri: list[str] = typer.Option(
        ..., "--redirect-uri", help="where customers are sent back after signing in (repeatable)"
    ),
    confidential: bool = typer.Option(
        False, "--confidential", help="a server-side app that can keep a secret (gets refresh tokens)"
    ),
) -> None:
    """Register an OAuth client and print its id (and secret, shown only this once)."""
    from shared.errors import BankError

    try:
        client_id, secret = asyncio.run(_create_client(name, list(redirect_uri), confidential))
    except BankError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"client_id: {client_id}")
    if secret:
        typer.echo(f"client_secret: {secret}")
        typer.echo("The secret is shown only now; the bank keeps only its hash.", err=True)
    else:
        typer.echo("public client: no secret, no refresh tokens", err=True)


async def _create_client(name: str, redirect_uris: list[str], confidential: bool) -> tuple[str, str | None]:
    from services.accounts.config import AccountsSettings
    from services.accounts.identity.service import IdentityService
    from services.accounts.service import LedgerService
    from shared.db import Database
    from shared.events.outbox import Outbox

    db = Database(load(BankSettings).database_url, pool_size=1, application_name="bank-cli")
    try:
        settings = load(AccountsSettings)
        identity = IdentityService(db, LedgerService(Outbox("accounts"), settings), settings)
        client, secret = await identity.create_client(name, redirect_uris, confidential=confidential)
        return client.id, secret
    finally:
        await db.dispose()


def demo(
    export: bool = typer.Option(
        False,
        "--export",
        help="print only `export TOKEN=… ACCOUNT=…` for `eval` (the rest goes to stderr)",
    ),
) -> None:
    """Create a demo customer with an account, and print how to call the API as them."""
    email = f"demo+{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(12)
    settings = load(BankSettings)
    user_id, account_id, token = asyncio.run(_demo(settings, email, password))
    api = settings.gateway_url
    auth = '"Authorization: Bearer $TOKEN"'
    exports = f"export TOKEN={shlex.quote(token)}\nexport ACCOUNT={shlex.quote(account_id)}\n"
    typer.echo(
        f"A demo customer:\n"
        f"  email         {email}\n"
        f"  password      {password}\n"
        f"  user_id       {user_id}\n"
        f"  account_id    {account_id}\n"
        f"  access_token  {token}\n\n"
        f'Try it through the gateway (`eval "$(bank demo --export)"` sets TOKEN and ACCOUNT for you):\n'
        + ("" if export else "".join(f"  {line}\n" for line in exports.splitlines()))
        + f"  curl -s -H {auth} {api}/ping/whoami\n"
        f"  curl -s -H {auth} {api}/accounts\n"
        f'  curl -s -H {auth} "{api}/balance?account_id=$ACCOUNT"\n',
        err=export,
    )
    if export:
        typer.echo(exports, nl=False)


def _database_url(settings: BankSettings) -> str:
    """The bank's database: DATABASE_URL if set, else the embedded PostgreSQL `bank up` starts (on
    BANK_PG_PORT, which the default URL does not follow)."""
    if os.environ.get("DATABASE_URL") or os.environ.get("BANK_DATABASE_URL"):
        return settings.database_url
    return f"postgresql://postgres@127.0.0.1:{settings.pg_port}/bank"


async def _demo(settings: BankSettings, email: str, password: str) -> tuple[str, str, str]:
    from services.accounts.config import AccountsSettings
    from services.accounts.identity.service import IdentityService, TokenRequest
    from services.accounts.service import LedgerService
    from shared.db import Database
    from shared.events.outbox import Outbox

    db = Database(_database_url(settings), pool_size=1, application_name="bank-cli")
    try:
        accounts = load(AccountsSettings)
        identity = IdentityService(db, LedgerService(Outbox("accounts"), accounts), accounts)
        await identity.start()
        done = await identity.sign_up(email, password, "Demo Customer")
        grant = await identity.token(
            TokenRequest(
                grant_type="password",
                client_id=accounts.first_party_client_id,
                username=email,
                password=password,
            )
        )
        return done.user.id, done.account.id, grant.access_token
    finally:
        await db.dispose()


# `python -m bank.accounts_cli …` works before (and after) these are registered on `bank`.
app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(clients, name="clients")
app.command("demo")(demo)

if __name__ == "__main__":
    app()
