"""The population: customers signed up, signed in, topped up and carded through the bank's public API.

Who they are (names, e-mails, passwords, top-up amounts) is deterministic given the seed; the cards'
numbers are the bank's. A customer who already exists (the same seed seeded twice into one bank) is
signed in and given a fresh card. Calls run with bounded concurrency and honour 429 Retry-After, so
seeding through the gateway works under its sign-up rate limit (2/s per client by default: point
`signup_url` at accounts, or raise `GATEWAY_RATE_LIMITS`'s "auth" class, to seed thousands quickly).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

APP_CLIENT_ID = "oauthclient_mondo_app"
FIRST = ("Ada", "Alan", "Grace", "Tim", "Mary", "Joan", "Ravi", "Priya", "Tom", "Aisha", "Chen", "Olu",
         "Sofia", "Liam", "Noah", "Isla", "Amara", "Kofi", "Elena", "Sam")  # fmt: skip
LAST = ("Lovelace", "Turing", "Hopper", "Berners-Lee", "Somerville", "Clarke", "Patel", "Shah", "Jones",
        "Khan", "Wei", "Adeyemi", "Rossi", "Murphy", "Smith", "Brown", "Okafor", "Mensah", "Novak",
        "Evans")  # fmt: skip
RETRIES = 40
IDENTITY_CONCURRENCY = 4
TOPUP_RANGE = (150_000, 500_000)  # minor units; accounts takes at most £5,000 a top-up


class SeedingError(RuntimeError):
    pass


@dataclass
class Customer:
    index: int
    email: str
    password: str
    name: str
    topup: int
    user_id: str = ""
    account_id: str = ""
    card_id: str = ""
    pan: str = ""
    cvc: str = ""
    expiry: str = ""  # YYMM, as the network sends it
    token: str = field(default="", repr=False)
    pot_id: str = ""  # the pot the app moves money into and out of (created before a run that needs it)


@dataclass
class Population:
    seed: int
    customers: list[Customer]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"seed": self.seed, "customers": [asdict(c) for c in self.customers]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        path.chmod(0o600)  # PANs, CVCs and tokens of test customers

    @classmethod
    def load(cls, path: Path) -> Population:
        doc = json.loads(path.read_text())
        return cls(doc["seed"], [Customer(**c) for c in doc["customers"]])


def plan(count: int, seed: int) -> list[Customer]:
    """Who the customers are: deterministic given the seed."""
    rng = random.Random(f"population:{seed}")
    out = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        out.append(
            Customer(
                index=i,
                email=f"sim{seed}.{i}@sim.example",
                password=f"sim-{seed}-{rng.getrandbits(64):016x}",
                name=f"{first} {last}",
                topup=rng.randint(*TOPUP_RANGE),
            )
        )
    return out


def _expiry_yymm(mm_yy: str) -> str:
    month, year = mm_yy.split("/")
    return f"{year}{month}"


class _Api:
    def __init__(self, client: httpx.AsyncClient, base_url: str, signup_url: str) -> None:
        self.client, self.base, self.signup = client, base_url.rstrip("/"), signup_url.rstrip("/")
        # Sign-up and sign-in hash a password (scrypt: tens of ms of CPU each, by design): a few at a
        # time, or a busy bank's gateway times them out and opens its breaker on accounts.
        self.identity = asyncio.Semaphore(IDENTITY_CONCURRENCY)

    async def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One call, again after a 429's Retry-After, and again (for up to a minute or so, backing off)
        on 502/503/504 or no answer: a busy bank's gateway opens its breaker for a few seconds."""
        failures = 0
        while True:
            try:
                r = await self.client.request(method, url, **kwargs)
            except httpx.TransportError:
                failures += 1
                if failures > RETRIES:
                    raise
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            if r.status_code == 429:
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1") or 1), 10.0))
                continue
            if r.status_code in (502, 503, 504) and failures < RETRIES:
                failures += 1
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            return r

    async def token(self, c: Customer) -> str:
        async with self.identity:
            r = await self.call("POST", f"{self.signup}/oauth2/token", data={
                "grant_type": "password", "client_id": APP_CLIENT_ID, "username": c.email,
                "password": c.password,
            })  # fmt: skip
        _expect(r, 200, "sign-in")
        return str(r.json()["access_token"])

    async def enrol(self, c: Customer) -> Customer:
        async with self.identity:
            r = await self.call(
                "POST",
                f"{self.signup}/users",
                data={"email": c.email, "password": c.password, "name": c.name},
            )
        fresh = r.status_code == 201
        if fresh:
            body = r.json()
            c.account_id = body["account"]["id"]
            c.user_id = body.get("user", {}).get("id", "") or body["account"].get("owners", [{}])[0].get(
                "user_id", ""
            )
        elif r.status_code != 409:
            _expect(r, 201, "sign-up")
        c.token = await self.token(c)
        auth = {"Authorization": f"Bearer {c.token}"}
        if not fresh:
            r = await self.call("GET", f"{self.base}/accounts", headers=auth)
            _expect(r, 200, "accounts")
            c.account_id = r.json()["accounts"][0]["id"]
        if not c.user_id:
            r = await self.call("GET", f"{self.base}/ping/whoami", headers=auth)
            if r.status_code == 200:
                c.user_id = r.json().get("user_id", "")
        key = f"sim-topup-{c.email}" if fresh else f"sim-topup-{c.email}-{secrets.token_hex(4)}"
        r = await self.call("POST", f"{self.base}/topup", headers={**auth, "Idempotency-Key": key}, data={
            "account_id": c.account_id, "amount": str(c.topup), "currency": "GBP",
        })  # fmt: skip
        _expect(r, 201, "top-up")
        key = f"sim-card-{c.email}" if fresh else f"sim-card-{c.email}-{secrets.token_hex(4)}"
        r = await self.call("POST", f"{self.base}/cards", headers={**auth, "Idempotency-Key": key},
                            data={"account_id": c.account_id})  # fmt: skip
        _expect(r, 201, "card")
        card = r.json()["card"]
        c.card_id, c.pan, c.cvc, c.expiry = card["id"], card["pan"], card["cvc"], _expiry_yymm(card["expiry"])
        return c


def _expect(r: httpx.Response, status: int, what: str) -> None:
    if r.status_code != status:
        raise SeedingError(f"{what}: HTTP {r.status_code} {r.text[:300]}")


async def seed_population(
    base_url: str,
    count: int,
    seed: int,
    *,
    signup_url: str | None = None,
    concurrency: int = 16,
    progress: Callable[[int, int], Awaitable[None] | None] | None = None,
) -> Population:
    """`count` customers, each with an account, a top-up and a card, `concurrency` at a time."""
    customers = plan(count, seed)
    gate = asyncio.Semaphore(concurrency)
    done = 0
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        api = _Api(client, base_url, signup_url or base_url)

        async def one(c: Customer) -> Customer:
            nonlocal done
            async with gate:
                await api.enrol(c)
            done += 1
            if progress is not None:
                result = progress(done, count)
                if result is not None:
                    await result
            return c

        await asyncio.gather(*(one(c) for c in customers))
    return Population(seed, customers)


async def sign_in(base_url: str, customer: Customer, client: httpx.AsyncClient) -> str:
    """A fresh access token (the run's tokens may have expired by reconciliation time)."""
    customer.token = await _Api(client, base_url, base_url).token(customer)
    return customer.token
