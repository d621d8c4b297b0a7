"""Webhooks' one call to accounts: who owns an account (`GET /internal/accounts/{id}`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import BankError
from shared.http import ServiceClient
from shared.ids import plausible_id


@dataclass(frozen=True, slots=True)
class AccountInfo:
    id: str
    user_id: str
    closed: bool


class AccountsClient:
    def __init__(self, base_url: str, internal_token: str) -> None:
        self.client = ServiceClient("accounts", base_url, timeout=2.0, retries=2)
        self._headers = {INTERNAL_TOKEN_HEADER: internal_token}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def account(self, account_id: str) -> AccountInfo | None:
        if not plausible_id(account_id):
            return None
        unavailable = BankError(
            "service_unavailable.accounts", "accounts cannot confirm who owns that account; try again"
        )
        try:
            resp = await self.client.get(
                f"/internal/accounts/{quote(account_id, safe='')}", headers=self._headers
            )
        except BankError:
            raise unavailable from None
        if resp.status_code in (400, 404):  # no such account (or not even a well-formed id)
            return None
        if resp.status_code >= 400:
            raise unavailable
        body = resp.json()
        return AccountInfo(body["id"], body["user_id"], bool(body.get("closed", False)))
