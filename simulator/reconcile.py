"""After a run: what the network thinks each card spent, against what the bank's public API says.

`balances` reads every customer's `/balance` before a run (the network's opening books); `reconcile`
compares the books' expected available balance per account with `/balance` after it. The bank
settles some things a moment later (a compensation releasing the hold of an authorisation it
answered 91, a reversal it took while accounts was away), so differences are re-checked for up to
`settle_seconds` before they are reported. So are the customers' pots: each pot's balance at the
start plus the deposits less the withdrawals the app was answered as done, against `GET /pots`.

Only the public API is read: the bank's own checks (`bank ledger verify`, `bank check`) are the
bank's tooling's to run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from simulator.books import Books
from simulator.population import Customer, sign_in


class _Reader:
    def __init__(self, base_url: str, client: httpx.AsyncClient, concurrency: int) -> None:
        self.base, self.client, self.gate = base_url.rstrip("/"), client, asyncio.Semaphore(concurrency)

    async def balance(self, c: Customer) -> int:
        doc = await self._get(c, "/balance", {"account_id": c.account_id})
        return int(doc["balance"])

    async def pot(self, c: Customer) -> int:
        """The balance of the customer's pot (the app's), from `GET /pots`."""
        doc = await self._get(c, "/pots", {"current_account_id": c.account_id})
        for pot in doc["pots"]:
            if pot["id"] == c.pot_id:
                return int(pot["balance"])
        raise RuntimeError(f"{c.account_id}: its pot {c.pot_id} is not in GET /pots")

    async def _get(self, c: Customer, path: str, params: dict[str, str]) -> dict[str, Any]:
        async with self.gate:
            for attempt in range(6):
                try:
                    r = await self.client.get(
                        f"{self.base}{path}", params=params, headers={"Authorization": f"Bearer {c.token}"}
                    )
                except httpx.TransportError:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                if r.status_code == 401:
                    await sign_in(self.base, c, self.client)
                    continue
                if r.status_code in (429, 502, 503, 504):
                    await asyncio.sleep(float(r.headers.get("retry-after", "0.5") or 0.5))
                    continue
                if r.status_code != 200:
                    raise RuntimeError(f"{c.account_id}: {path} answered {r.status_code} {r.text[:200]}")
                return dict(r.json())
        raise RuntimeError(f"{c.account_id}: {path} did not answer")


async def balances(base_url: str, customers: Sequence[Customer], concurrency: int = 16) -> list[int]:
    """Every customer's available balance, in population order."""
    async with httpx.AsyncClient(timeout=15) as client:
        reader = _Reader(base_url, client, concurrency)
        return list(await asyncio.gather(*(reader.balance(c) for c in customers)))


start_balances = balances


async def pot_balances(base_url: str, customers: Sequence[Customer], cards: Sequence[int]) -> dict[int, int]:
    """The balance of each of these customers' pots (`Customer.pot_id`), by card."""
    async with httpx.AsyncClient(timeout=15) as client:
        reader = _Reader(base_url, client, 16)
        return dict(zip(cards, await asyncio.gather(*(reader.pot(customers[i]) for i in cards)), strict=True))


async def reconcile(
    books: Books,
    customers: Sequence[Customer],
    base_url: str,
    *,
    settle_seconds: float = 30.0,
) -> list[str]:
    """Every difference between the network's books and the bank, as a sentence; empty when clean."""
    differences = list(books.problems)
    expected = books.expected()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_seconds
    pending = list(range(len(customers)))
    actual: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=15) as client:
        reader = _Reader(base_url, client, 16)
        while True:
            got = await asyncio.gather(*(reader.balance(customers[i]) for i in pending))
            actual.update(zip(pending, got, strict=True))
            pending = [i for i in pending if actual[i] != expected[i]]
            if not pending or loop.time() >= deadline:
                break
            await asyncio.sleep(0.5)
    pots = books.expected_pots()
    pots_actual = await pot_balances(base_url, customers, list(pots))
    for i in pending:
        c = customers[i]
        differences.append(
            f"{c.account_id} (card {c.pan[-4:]}, customer {i}): the network expects available "
            f"{expected[i]}, the bank says {actual[i]} (bank - network = {actual[i] - expected[i]:+d})"
        )
    for i, want in pots.items():
        if pots_actual[i] != want:
            c = customers[i]
            differences.append(
                f"{c.pot_id} (pot of {c.account_id}, customer {i}): the app expects {want}, the bank "
                f"says {pots_actual[i]} (bank - app = {pots_actual[i] - want:+d})"
            )
    return differences
