"""Notifications' one call to accounts: who owns an account (`GET /internal/accounts/{id}`)."""

from __future__ import annotations

from urllib.parse import quote

from shared.auth import INTERNAL_TOKEN_HEADER
from shared.http import ServiceClient, raise_for_upstream_error
from shared.ids import plausible_id


class AccountsClient:
    def __init__(self, base_url: str, internal_token: str, *, timeout: float = 2.0) -> None:
        self.client = ServiceClient("accounts", base_url, timeout=timeout, retries=2)
        self.headers = {INTERNAL_TOKEN_HEADER: internal_token}

    async def owner(self, account_id: str) -> str | None:
        """The account's owner's user id; None if accounts knows no such account."""
        if not plausible_id(account_id):
            return None
        resp = await self.client.get(f"/internal/accounts/{quote(account_id, safe='')}", headers=self.headers)
        if resp.status_code == 404:
            return None
        body = raise_for_upstream_error(resp, "accounts").json()
        return str(body["user_id"])

    async def aclose(self) -> None:
        await self.client.aclose()
