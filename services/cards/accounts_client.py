"""Cards' calls to accounts' internal API, over the platform's ServiceClient.

Two clients share nothing but the address: the authorisation path's, whose
whole budget (retries included) is `CARDS_ACCOUNTS_DEADLINE_MS`, and one for
everything else (reversals, clearing, ownership checks, the compensation job)
with ordinary timeouts. Each has its own circuit breaker, so a tripped hot path
does not stop the job that cleans up after it.

Every call is idempotent on the network id it carries, so retrying is safe.
A call whose fate is unknown raises `AccountsUnavailable(maybe_applied=True)`;
one that provably never reached accounts says `maybe_applied=False`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from services.cards.config import CardsSettings
from shared import context
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import BankError
from shared.http import CircuitBreaker, ServiceClient
from shared.ids import plausible_id
from shared.lean_transport import Answer, LeanTransport

# ServiceClient errors raised before a request was written.
_NOT_SENT = frozenset({"service_unavailable.circuit_open", "timeout.deadline_exceeded"})
_CAUSES = {
    "service_unavailable.circuit_open": "circuit_open",
    "timeout.deadline_exceeded": "deadline",
    "timeout.accounts": "timeout",
}


class AccountsUnavailable(Exception):
    def __init__(self, message: str, *, maybe_applied: bool, cause: str) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied
        self.cause = cause  # circuit_open | deadline | timeout | unreachable | http_5xx


class AccountsRefused(Exception):
    """accounts answered 4xx: the request itself is wrong (unknown account, wrong currency…)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"accounts refused the request: HTTP {status} {code}")
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class HoldAsk:
    account_id: str
    hold_id: str  # the network transaction id
    amount: int
    currency: str
    expires_at: datetime
    traceparent: str | None = None  # the authorisation's request, which the hold's event continues


@dataclass(frozen=True, slots=True)
class HoldAnswer:
    status: str  # active | declined
    decline_reason: str | None


@dataclass(frozen=True, slots=True)
class AccountInfo:
    id: str
    user_id: str
    currency: str
    closed: bool
    available: int


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Bound everything inside (calls, their retries and backoff) by `seconds`, or the caller's
    own deadline if that is sooner."""
    previous = context.current_deadline()
    mine = time.monotonic() + seconds
    context.set_deadline(mine if previous is None else min(previous, mine))
    try:
        yield
    finally:
        context.set_deadline(previous)


def _code(resp: Answer) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"http_{resp.status_code}"
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else f"http_{resp.status_code}"


def _hold_path(hold_id: str, action: str) -> str:
    return f"/internal/holds/{quote(hold_id, safe='')}/{action}"


class AccountsClient:
    def __init__(
        self,
        base_url: str,
        internal_token: str,
        settings: CardsSettings,
    ) -> None:
        self.deadline = settings.accounts_deadline_ms / 1000
        self._headers = {INTERNAL_TOKEN_HEADER: internal_token}

        def client(timeout: float, retries: int) -> ServiceClient:
            breaker = CircuitBreaker(
                "accounts",
                failure_threshold=settings.accounts_breaker_failures,
                reset_timeout=settings.accounts_breaker_reset_seconds,
            )
            return ServiceClient(
                "accounts",
                base_url,
                timeout=timeout,
                retries=retries,
                backoff=0.01,
                breaker=breaker,
                transport=LeanTransport(max_connections=settings.accounts_connections),
            )

        self.hot = client(self.deadline, retries=1)
        self.other = client(2.0, retries=2)

    async def aclose(self) -> None:
        await self.hot.aclose()
        await self.other.aclose()

    async def _call(self, client: ServiceClient, method: str, path: str, json: Any = None) -> Answer:
        try:
            resp = await client.exchange(method, path, json=json, headers=self._headers, idempotent=True)
        except BankError as exc:
            raise AccountsUnavailable(
                exc.message,
                maybe_applied=exc.code not in _NOT_SENT,
                cause=_CAUSES.get(exc.code, "unreachable"),
            ) from None
        if resp.status_code >= 500:
            raise AccountsUnavailable(
                f"accounts answered HTTP {resp.status_code}", maybe_applied=True, cause="http_5xx"
            )
        return resp

    # The authorisation path: one call per batch, within the deadline ------------------------------

    async def place_holds(self, asks: Sequence[HoldAsk]) -> list[HoldAnswer | AccountsRefused]:
        """Provisional holds for a batch of authorisations, one answer each in order: a hold's fate,
        or `AccountsRefused` for one accounts would not place (an unknown account)."""
        body = {"holds": [
            {"account_id": a.account_id, "network_txn_id": a.hold_id, "amount": a.amount,
             "currency": a.currency, "expires_at": a.expires_at.isoformat(), "traceparent": a.traceparent}
            for a in asks
        ]}  # fmt: skip
        with within(self.deadline):
            resp = await self._call(self.hot, "POST", "/internal/holds/batch", body)
        if resp.status_code >= 400:
            raise AccountsRefused(resp.status_code, _code(resp))
        return [
            AccountsRefused(422, answer["error"]["code"]) if "error" in answer
            else HoldAnswer(answer["status"], answer.get("decline_reason"))
            for answer in resp.json()["holds"]
        ]  # fmt: skip

    async def place_hold(
        self, account_id: str, hold_id: str, amount: int, currency: str, expires_at: datetime, *, hot: bool
    ) -> HoldAnswer:
        body = {
            "account_id": account_id,
            "network_txn_id": hold_id,
            "amount": amount,
            "currency": currency,
            "expires_at": expires_at.isoformat(),
        }
        if hot:
            with within(self.deadline):
                resp = await self._call(self.hot, "POST", "/internal/holds", body)
        else:
            resp = await self._call(self.other, "POST", "/internal/holds", body)
        if resp.status_code >= 400:
            raise AccountsRefused(resp.status_code, _code(resp))
        hold = resp.json()["hold"]
        return HoldAnswer(hold["status"], hold.get("decline_reason"))

    async def account(self, account_id: str, *, hot: bool = False) -> AccountInfo | None:
        if not plausible_id(account_id):
            return None
        path = f"/internal/accounts/{quote(account_id, safe='')}"
        if hot:
            with within(self.deadline):
                resp = await self._call(self.hot, "GET", path)
        else:
            resp = await self._call(self.other, "GET", path)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise AccountsRefused(resp.status_code, _code(resp))
        body = resp.json()
        return AccountInfo(body["id"], body["user_id"], body["currency"], body["closed"], body["available"])

    # Everything else ------------------------------------------------------------------------------

    async def release_hold(self, hold_id: str) -> str:
        """The hold's status afterwards (released, expired, declined), `captured`, or `missing`."""
        resp = await self._call(self.other, "POST", _hold_path(hold_id, "release"))
        if resp.status_code == 404:
            return "missing"
        if resp.status_code == 409:
            return "captured"
        if resp.status_code >= 400:
            raise AccountsRefused(resp.status_code, _code(resp))
        return str(resp.json()["hold"]["status"])

    async def capture(self, hold_id: str, amount: int, tolerance: int) -> str:
        """`captured`, or why not: `missing` (no such hold), `not_active` (released, expired)."""
        body = {"amount": amount, "over_capture_tolerance": tolerance}
        resp = await self._call(self.other, "POST", _hold_path(hold_id, "capture"), body)
        if resp.status_code == 404:
            return "missing"
        if resp.status_code == 409:
            return "not_active"
        if resp.status_code >= 400:
            raise AccountsRefused(resp.status_code, _code(resp))
        return "captured"

    async def post(self, account_id: str, reference: str, amount: int, currency: str, kind: str) -> None:
        """A posting without a hold: `debit` (forced clearing) or `credit` (refund)."""
        body = {
            "account_id": account_id,
            "network_txn_id": reference,
            "amount": amount,
            "currency": currency,
            "kind": kind,
        }
        resp = await self._call(self.other, "POST", "/internal/postings", body)
        if resp.status_code >= 400:
            raise AccountsRefused(resp.status_code, _code(resp))
