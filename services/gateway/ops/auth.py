"""The ops credential: `GATEWAY_OPS_TOKEN`, sent as a bearer token or as the password of HTTP Basic.

Basic is what a browser can be asked for (the 401 carries `WWW-Authenticate: Basic`), so an ops
person opens /ops and types the token; scripts and Prometheus-style pollers send a bearer token.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from shared.errors import BankError

REALM = 'Basic realm="bank ops", charset="UTF-8"'


def refused(message: str) -> BankError:
    return BankError("unauthorized.ops_credential", message, headers={"WWW-Authenticate": REALM})


def presented_secret(authorization: str | None) -> str | None:
    """The secret in a `Bearer <token>` or `Basic base64(user:token)` header (any user name)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


class OpsCredential:
    """FastAPI dependency: every /ops page and figure needs the ops token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def check(self, authorization: str | None) -> None:
        secret = presented_secret(authorization)
        if secret is None:
            raise refused("the ops pages need the ops credential (GATEWAY_OPS_TOKEN), as Bearer or Basic")
        if not hmac.compare_digest(secret.encode(), self._token):
            raise refused("that is not the ops credential")

    async def __call__(self, request: Request) -> None:
        self.check(request.headers.get("authorization"))
