"""Accounts' one call to cards: which provisional holds cards recorded an approval behind (decision 0031)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.auth import INTERNAL_TOKEN_HEADER
from shared.http import ServiceClient


class CardsUnavailable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Verdicts:
    backed: frozenset[str]  # an approved authorisation stands behind the hold: keep it
    unbacked: frozenset[str]  # none does, and now none ever will: release it


class CardsClient:
    def __init__(self, base_url: str, internal_token: str) -> None:
        self._client = ServiceClient("cards", base_url, timeout=5.0, retries=2)
        self._headers = {INTERNAL_TOKEN_HEADER: internal_token}

    async def resolve(self, network_txn_ids: Sequence[str]) -> Verdicts:
        """Final answers: cards closes every id it has not recorded, so it can never record it later."""
        body = {"network_transaction_ids": list(network_txn_ids)}
        resp = await self._client.exchange(
            "POST", "/internal/authorisations/resolve", json=body, headers=self._headers, idempotent=True
        )
        if resp.status_code != 200:
            raise CardsUnavailable(f"cards answered HTTP {resp.status_code}")
        body = resp.json()
        return Verdicts(frozenset(body["backed"]), frozenset(body["unbacked"]))

    async def aclose(self) -> None:
        await self._client.aclose()
