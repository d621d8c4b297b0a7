"""Identity's HTTP routes: sign-up, OAuth2 (docs.monzo.com "Authentication"), JWKS, revocations, whoami.

Request bodies are form-encoded, as in Monzo's API. The authorization step is
a browser page, so its errors are HTML; every other error is Monzo's JSON
(`code`, `message`, and OAuth2's `error` on the token endpoint).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from services.accounts import schemas
from services.accounts.identity import forms, rules
from services.accounts.identity.service import IdentityService, TokenGrant, TokenRequest
from shared.auth import Identity, require_identity
from shared.errors import BankError, bad_request

Caller = Annotated[Identity, Depends(require_identity)]
FormText = Annotated[str, Form()]
OptionalForm = Annotated[str | None, Form()]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def identity_routers(service: IdentityService) -> list[APIRouter]:
    return [users_router(service), oauth_router(service), ping_router()]


def users_router(service: IdentityService) -> APIRouter:
    api = APIRouter(tags=["identity"])

    @api.post("/users", status_code=201)
    async def sign_up(email: FormText, password: FormText, name: FormText) -> dict[str, Any]:
        """Sign up: a customer and their prepaid GBP account."""
        done = await service.sign_up(email, password, name)
        return {
            "user": {
                "id": done.user.id,
                "email": done.user.email,
                "name": done.user.name,
                "created": schemas.rfc3339(done.user.created),
            },
            "account": schemas.account_json(done.account, done.user),
        }

    return api


def ping_router() -> APIRouter:
    api = APIRouter(tags=["identity"])

    @api.get("/ping/whoami")
    async def whoami(caller: Caller) -> dict[str, Any]:
        return {"authenticated": True, "client_id": caller.client_id, "user_id": caller.user_id}

    return api


def oauth_router(service: IdentityService) -> APIRouter:
    api = APIRouter(prefix="/oauth2", tags=["oauth2"])

    @api.get("/authorize", response_class=HTMLResponse)
    async def authorize_form(
        client_id: str = "", redirect_uri: str = "", response_type: str = "", state: str = ""
    ) -> Response:
        """The sign-in page a client sends its user to (Monzo's auth.monzo.com)."""
        try:
            client = await service.authorization_client(client_id, redirect_uri)
        except BankError as exc:
            return _html(forms.error_page(exc.message), exc.status)
        if response_type != "code":
            return _back_to_client(redirect_uri, {"error": "unsupported_response_type"}, state)
        hidden = _hidden(client_id, redirect_uri, response_type, state)
        return _html(forms.login_page(client_name=client.name, hidden=hidden), 200)

    @api.post("/authorize", response_class=HTMLResponse)
    async def authorize(
        client_id: Annotated[str, Form()] = "",
        redirect_uri: Annotated[str, Form()] = "",
        response_type: Annotated[str, Form()] = "",
        state: Annotated[str, Form()] = "",
        email: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
    ) -> Response:
        """Sign in: back to the client's redirect URI with a code, or the form again with an error."""
        try:  # the hidden fields are request input like any other: check them all again
            client = await service.authorization_client(client_id, redirect_uri)
        except BankError as exc:
            return _html(forms.error_page(exc.message), exc.status)
        if response_type != "code":
            return _back_to_client(redirect_uri, {"error": "unsupported_response_type"}, state)
        try:
            code = await service.authorize(client_id, redirect_uri, email, password)
        except BankError as exc:
            hidden = _hidden(client_id, redirect_uri, response_type, state)
            page = forms.login_page(client_name=client.name, hidden=hidden, email=email, error=exc.message)
            return _html(page, exc.status)
        return _back_to_client(redirect_uri, {"code": code}, state)

    @api.post("/token")
    async def token(
        request: Request,
        grant_type: OptionalForm = None,
        client_id: OptionalForm = None,
        client_secret: OptionalForm = None,
        redirect_uri: OptionalForm = None,
        code: OptionalForm = None,
        refresh_token: OptionalForm = None,
        username: OptionalForm = None,
        password: OptionalForm = None,
    ) -> JSONResponse:
        """Exchange a code, refresh, or (the bank's own app only) sign in with a password."""
        basic_id, basic_secret = _basic_credentials(request)
        if client_id and basic_id and client_id != basic_id:
            raise BankError(
                "bad_request.bad_param.client_id",
                "client_id differs from the Authorization header's",
                extra={"error": "invalid_request"},
            )
        grant = await service.token(
            TokenRequest(
                grant_type=grant_type,
                client_id=client_id or basic_id,
                client_secret=client_secret or basic_secret,
                redirect_uri=redirect_uri,
                code=code,
                refresh_token=refresh_token,
                username=username,
                password=password,
            )
        )
        return JSONResponse(_token_json(grant), headers=NO_STORE)

    @api.get("/jwks.json")
    async def jwks() -> JSONResponse:
        """The public keys that verify access tokens (RFC 7517). Gateways verify tokens locally with them."""
        return JSONResponse(service.jwks(), headers={"Cache-Control": "public, max-age=300"})

    @api.get("/revocations")
    async def revocations(since: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        """Access tokens revoked (replaced by a newer one) that have not expired yet, revoked after `since`.

        Poll with `since` = the previous answer's `as_of` minus a minute: a revocation can commit a
        moment after the time it records, and the overlap catches it.
        """
        revoked, as_of = await service.revocations(_parse_since(since))
        return {
            "revoked": [
                {
                    "jti": t.jti,
                    "expires_at": schemas.rfc3339(t.expires_at),
                    "revoked_at": schemas.rfc3339(t.revoked_at) if t.revoked_at else None,
                }
                for t in revoked
            ],
            "as_of": schemas.rfc3339(as_of),
        }

    return api


def _html(page: str, status: int) -> HTMLResponse:
    return HTMLResponse(page, status_code=status, headers=forms.HEADERS)


def _hidden(client_id: str, redirect_uri: str, response_type: str, state: str) -> dict[str, str]:
    return {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": response_type,
        "state": state,
    }


def _back_to_client(redirect_uri: str, params: dict[str, str], state: str) -> RedirectResponse:
    """Only ever called with a redirect URI the client registered."""
    if state:
        params = {**params, "state": state}
    return RedirectResponse(rules.with_query(redirect_uri, params), status_code=302, headers=NO_STORE)


def _token_json(grant: TokenGrant) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": grant.access_token,
        "client_id": grant.client_id,
        "expires_in": grant.expires_in,
        "refresh_token": grant.refresh_token,
        "token_type": grant.token_type,
        "user_id": grant.user_id,
    }
    if grant.refresh_token is None:  # Monzo: public clients are not issued refresh tokens
        del body["refresh_token"]
    return body


def _basic_credentials(request: Request) -> tuple[str | None, str | None]:
    """RFC 6749 §2.3.1 client_secret_basic, which many OAuth libraries send instead of form fields."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        user, sep, secret = "", "", ""
    if not sep or not user:
        raise BankError(
            "unauthorized.bad_client_credentials",
            "the Authorization header is not Basic base64(client_id:client_secret)",
            extra={"error": "invalid_client"},
        )
    return unquote(user), unquote(secret) or None


def _parse_since(since: str | None) -> datetime | None:
    if not since:
        return None
    try:
        moment = datetime.fromisoformat(since.strip().replace(" ", "+"))  # an unencoded "+" arrives as " "
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise bad_request("bad_param.since", "since must be an RFC 3339 time with a time zone", param="since")
    return moment
