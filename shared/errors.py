"""Typed error codes, and the one place where they become HTTP statuses.

A code is `<class>.<detail>` (Monzo style: `bad_request.missing_param`,
`unauthorized.bad_access_token`). The class before the first dot decides the
HTTP status, so a new detail never needs a new mapping.
"""

from __future__ import annotations

from typing import Any

STATUS_BY_CLASS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "gone": 410,
    "payload_too_large": 413,
    "unprocessable": 422,
    "insufficient_funds": 422,
    "rate_limited": 429,
    "internal": 500,
    "bad_gateway": 502,
    "service_unavailable": 503,
    "timeout": 504,
}


def status_for(code: str) -> int:
    return STATUS_BY_CLASS.get(code.split(".", 1)[0], 500)


class BankError(Exception):
    """An error the caller is meant to see: a typed code and a human message."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        params: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.params = params or {}
        self.extra = extra or {}  # further top-level body fields, e.g. OAuth2's "error"
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return status_for(self.code)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.params:
            body["params"] = self.params
        body.update(self.extra)
        return body


def bad_request(detail: str, message: str, **params: Any) -> BankError:
    return BankError(f"bad_request.{detail}", message, params=params or None)


def not_found(detail: str, message: str) -> BankError:
    return BankError(f"not_found.{detail}", message)


def conflict(detail: str, message: str) -> BankError:
    return BankError(f"conflict.{detail}", message)


def unauthorized(detail: str, message: str) -> BankError:
    return BankError(f"unauthorized.{detail}", message)


def forbidden(detail: str, message: str) -> BankError:
    return BankError(f"forbidden.{detail}", message)
