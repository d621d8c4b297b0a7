"""The customers' app: what a customer does from their phone rather than with their card.

Payments to another customer (`POST /payments`) and money into and out of a pot (`PUT
/pots/{id}/deposit|withdraw`), each on the customer's own access token, through the gateway, as a
mobile app calls the bank's public API. Every call carries the client's `dedupe_id`. One that gets no
answer (a timeout, a refused connection, a 429 or a 5xx) is sent again with the same `dedupe_id`,
backing off, until it is answered or `forward_seconds` have passed: the bank does it at most once, and
a resend of one that was done gets the first answer. A typed 4xx (insufficient funds, the daily limit)
is the bank's answer and is not sent again.

The answers are recorded like the card network's, by kind (`payment`, `pot_deposit`,
`pot_withdrawal`) and code: `ok` for a move done, `http_<status>:<error code>` for a refusal,
`no_answer` or `http_<status>` when every try went unanswered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx

from simulator.loadgen import NO_ANSWER, HttpError, Pool, Stats
from simulator.population import Customer, SeedingError, sign_in
from simulator.reconcile import pot_balances
from simulator.scenarios import PAYMENT, POT_DEPOSIT, Message

OK = "ok"
POT_NAME = "Rainy day"


def unanswered(code: str) -> bool:
    """No answer, or one that says nothing about the move (429, 5xx): send it again."""
    return code == NO_ANSWER or code == "bad_json" or code.startswith(("http_429", "http_5"))


class App:
    """The app of every customer of a population, over one keep-alive pool to the gateway."""

    OK = OK
    unanswered = staticmethod(unanswered)

    def __init__(
        self,
        base_url: str,
        customers: Sequence[Customer],
        *,
        timeout: float = 10.0,
        forward_seconds: float = 90.0,
        connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.customers = customers
        self.timeout, self.forward_seconds = timeout, forward_seconds
        self.pool = Pool(base_url, {}, size=connections)
        self._signing: dict[int, asyncio.Task[str]] = {}

    # -- before a run ---------------------------------------------------------------------------------

    async def prepare_pots(self, cards: Iterable[int], concurrency: int = 8) -> dict[int, int]:
        """A pot for each of these customers (one per customer: its Idempotency-Key is theirs, so a
        second run finds the same pot), and each pot's balance now, by card."""
        from simulator.population import _Api

        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as client:
            api = _Api(client, self.base_url, self.base_url)

            async def one(card: int) -> None:
                c = self.customers[card]
                auth = {"Authorization": f"Bearer {c.token}"}
                async with gate:
                    r = await api.call("POST", f"{self.base_url}/pots", data={
                        "current_account_id": c.account_id, "name": POT_NAME,
                    }, headers={**auth, "Idempotency-Key": f"sim-pot-{c.email}"})  # fmt: skip
                    if r.status_code != 201:
                        raise SeedingError(f"pot for {c.account_id}: HTTP {r.status_code} {r.text[:300]}")
                    c.pot_id = r.json()["id"]

            wanted = sorted(set(cards))
            await asyncio.gather(*(one(card) for card in wanted))
        return await pot_balances(self.base_url, self.customers, wanted)

    # -- during a run ---------------------------------------------------------------------------------

    def _request(self, m: Message) -> tuple[str, str, dict[str, str]]:
        c = self.customers[m.card]
        assert m.dedupe_id is not None
        if m.kind == PAYMENT:
            assert m.counterparty is not None
            payee = self.customers[m.counterparty]
            # Half the payments name the recipient by e-mail, half by account id: both are the API's.
            recipient = payee.email if m.seq % 2 else payee.account_id
            form = {"source_account_id": c.account_id, "amount": str(m.amount), "currency": "GBP",
                    "recipient": recipient, "reference": f"sim {m.seq}",
                    "dedupe_id": m.dedupe_id}  # fmt: skip
            return "POST", "/payments", form
        if m.kind == POT_DEPOSIT:
            form = {"source_account_id": c.account_id, "amount": str(m.amount), "dedupe_id": m.dedupe_id}
            return "PUT", f"/pots/{c.pot_id}/deposit", form
        form = {"destination_account_id": c.account_id, "amount": str(m.amount), "dedupe_id": m.dedupe_id}
        return "PUT", f"/pots/{c.pot_id}/withdraw", form

    async def call(self, m: Message, stats: Stats) -> tuple[str, dict[str, Any]]:
        """Send `m` until answered (the same dedupe_id every time); its last code and answer."""
        method, path, form = self._request(m)
        body = urlencode(form).encode()
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.forward_seconds, 0.2
        signed_in_again = False
        while True:
            code, doc = await self._once(m.card, method, path, body, stats)
            if code == "http_401" and not signed_in_again:  # the token expired or was revoked
                signed_in_again = True
                if await self._sign_in(m.card):
                    continue
            if not unanswered(code) or loop.time() + pause >= deadline:
                return code, doc
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
            stats.resent += 1

    async def _once(
        self, card: int, method: str, path: str, body: bytes, stats: Stats
    ) -> tuple[str, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.customers[card].token}"}
        stats.in_flight += 1
        try:
            status, payload = await self.pool.request(method, path, body, self.timeout, headers=headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, HttpError, TimeoutError) as exc:
            stats.errors[f"app:{type(exc).__name__}"] += 1
            return NO_ANSWER, {}
        finally:
            stats.in_flight -= 1
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            return "bad_json", {}
        if not isinstance(doc, dict):
            doc = {}
        if status in (200, 201):
            return OK, doc
        error = doc.get("code")
        return (f"http_{status}:{error}" if error and status < 500 else f"http_{status}"), doc

    async def _sign_in(self, card: int) -> bool:
        """A fresh token for this customer (one sign-in at a time per customer); False if none came."""
        task = self._signing.get(card)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._fresh_token(self.customers[card]))
            self._signing[card] = task
        try:
            await asyncio.shield(task)
        except (httpx.HTTPError, SeedingError, KeyError, ValueError):
            return False
        return True

    async def _fresh_token(self, c: Customer) -> str:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await sign_in(self.base_url, c, client)

    async def aclose(self) -> None:
        self.pool.close()
