"""The ledger under concurrent load, on real PostgreSQL and over real sockets.

Every operation runs in its own transaction, all of them at once: through `LedgerService` on a pool wide
enough for each to hold its own connection (the `db` fixture's pool is deliberately small), and through
the HTTP API on a uvicorn server backed by that same wide pool, so the requests reach PostgreSQL together
rather than queueing for a connection. The row lock on the account is what must decide every race.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import text

from services.accounts import repository as repo
from services.accounts.config import AccountsSettings
from services.accounts.jobs import expire_due_holds
from services.accounts.service import LedgerService
from services.accounts.verify import verify_ledger
from shared.auth import INTERNAL_TOKEN_HEADER, SigningKey
from shared.db import Database
from shared.errors import BankError
from tests.accounts.conftest import (
    INTERNAL_TOKEN,
    AccountsServer,
    Customer,
    build_app,
    create_customer,
    new_ledger,
)
from tests.support.serving import Served

WIDE_POOL = 60  # 60 + 60 overflow: 100 transactions at once, each with its own connection


# Module-scoped: opening a hundred connections (and a server) once, not once per test, keeps this quick.
# Each test still starts from an empty database: its `db` fixture truncates every service table.


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def wide_db(database_url: str) -> AsyncIterator[Database]:
    wide = Database(database_url, pool_size=WIDE_POOL, application_name="tests-concurrency")
    yield wide
    await wide.dispose()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def wide_server(wide_db: Database) -> AsyncIterator[AccountsServer]:
    """The accounts API on a real socket, like `accounts_server`, but on the wide pool."""
    key = SigningKey.generate()
    ledger = new_ledger(AccountsSettings(topup_max=10**9))
    app = build_app(wide_db, ledger, key)
    # Idle keep-alive connections must outlive the gaps between tests.
    async with Served(app, log_level="warning", access_log=False, timeout_keep_alive=600) as served:
        yield AccountsServer(served.url, key, {INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN})


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http(wide_server: AccountsServer) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=wide_server.url, timeout=60, limits=limits) as client:
        yield client


async def account_state(db: Database, account_id: str) -> tuple[int, int]:
    async with db.read() as s:
        account = await repo.get_account(s, account_id)
        assert account is not None
        return account.balance, account.held


async def event_types(db: Database, account_id: str) -> Counter[str]:
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT event_type FROM accounts.outbox WHERE key = :a"), {"a": account_id}
        )
        return Counter(rows.scalars())


async def hold_statuses(db: Database, account_id: str) -> Counter[tuple[str, str | None]]:
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT status, decline_reason FROM accounts.holds WHERE account_id = :a"), {"a": account_id}
        )
        return Counter((status, reason) for status, reason in rows)


async def check_event_chain(db: Database, account_id: str) -> None:
    """The account's events, in outbox order, report a gap-free chain of balances ending at the row's."""
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT event_type, payload FROM accounts.outbox WHERE key = :a ORDER BY id"),
            {"a": account_id},
        )
        events = [(event_type, json.loads(payload)["data"]) for event_type, payload in rows]
    balance = available = 0
    for event_type, data in events:
        if event_type == "account.created":
            continue
        if event_type == "account.topup.completed":
            balance += data["amount"]
            available += data["amount"]
        elif event_type == "account.hold.captured":
            balance += data["amount"]
            available += data["amount"] + data["held_amount"]
        else:  # placed (negative amount), released and expired (positive)
            available += data["amount"]
        assert (data["balance"], data["available"]) == (balance, available), (event_type, data)
    row_balance, row_held = await account_state(db, account_id)
    assert (balance, available) == (row_balance, row_balance - row_held)


def hold_body(customer: Customer, network_txn_id: str, amount: int) -> dict[str, Any]:
    return {
        "account_id": customer.account_id,
        "network_txn_id": network_txn_id,
        "amount": amount,
        "currency": "GBP",
    }


# -- (a) many authorisations, money for ten --------------------------------------------------------------


async def test_100_concurrent_holds_against_money_for_10_approve_exactly_10(
    db: Database, wide_db: Database, ledger: LedgerService
) -> None:
    c = await create_customer(db, ledger, balance=1_000)

    async def authorise(n: int) -> tuple[str, str | None, int]:
        async with wide_db.transaction() as s:
            result = await ledger.place_hold(
                s, account_id=c.account_id, network_txn_id=f"race-{n}", amount=100, currency="GBP"
            )
        return result.hold.status, result.hold.decline_reason, result.account.available

    results = await asyncio.gather(*(authorise(n) for n in range(100)))

    assert Counter((status, reason) for status, reason, _ in results) == {
        ("active", None): 10,
        ("declined", "insufficient_funds"): 90,
    }
    # Each approval saw the one before it: the available balances they report are all different.
    assert sorted(available for status, _, available in results if status == "active") == list(
        range(0, 1_000, 100)
    )
    assert await account_state(db, c.account_id) == (1_000, 1_000)
    assert await hold_statuses(db, c.account_id) == {
        ("active", None): 10,
        ("declined", "insufficient_funds"): 90,
    }
    assert (await event_types(db, c.account_id))["account.hold.placed"] == 10
    await check_event_chain(db, c.account_id)
    assert await verify_ledger(db) == []


async def test_100_concurrent_holds_over_http_approve_exactly_10(
    db: Database, ledger: LedgerService, wide_server: AccountsServer, http: httpx.AsyncClient
) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    other = await create_customer(db, ledger, balance=500)  # busy at the same time, must not interfere
    requests = [hold_body(c, f"http-race-{n}", 100) for n in range(100)]
    requests += [hold_body(other, f"http-other-{n}", 50) for n in range(20)]

    responses = await asyncio.gather(
        *(http.post("/internal/holds", json=body, headers=wide_server.internal_headers) for body in requests)
    )

    assert {r.status_code for r in responses} == {200}
    outcome = Counter(
        (r.json()["hold"]["account_id"], r.json()["hold"]["status"], r.json()["hold"]["decline_reason"])
        for r in responses
    )
    assert outcome == {
        (c.account_id, "active", None): 10,
        (c.account_id, "declined", "insufficient_funds"): 90,
        (other.account_id, "active", None): 10,
        (other.account_id, "declined", "insufficient_funds"): 10,
    }
    assert await account_state(db, c.account_id) == (1_000, 1_000)
    assert await account_state(db, other.account_id) == (500, 500)
    for customer in (c, other):
        await check_event_chain(db, customer.account_id)
    assert await verify_ledger(db) == []


# -- (b) one top-up, sent many times -----------------------------------------------------------------


async def test_the_same_topup_sent_20_times_at_once_tops_up_once(
    db: Database, ledger: LedgerService, wide_server: AccountsServer, http: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger)
    headers = {**wide_server.auth(ada), "Idempotency-Key": "concurrent-topup-1"}
    form = {"account_id": ada.account_id, "amount": "2500", "currency": "GBP"}

    responses = await asyncio.gather(*(http.post("/topup", data=form, headers=headers) for _ in range(20)))

    assert [r.status_code for r in responses] == [201] * 20
    # The same JSON every time (replays come back from JSONB, so key order may differ from the first).
    bodies = {json.dumps(r.json(), sort_keys=True) for r in responses}
    assert len(bodies) == 1, bodies
    body = responses[0].json()
    assert body["topup"]["id"].startswith("topup_") and body["topup"]["amount"] == 2_500
    assert body["balance"] == 2_500
    assert await account_state(db, ada.account_id) == (2_500, 0)
    assert (await event_types(db, ada.account_id))["account.topup.completed"] == 1

    changed = {**form, "amount": "2501"}
    r = await http.post("/topup", data=changed, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "unprocessable.idempotency_key_reused"
    assert await account_state(db, ada.account_id) == (2_500, 0)
    assert await verify_ledger(db) == []


async def test_one_key_raced_with_two_different_bodies_runs_exactly_one_of_them(
    db: Database, ledger: LedgerService, wide_server: AccountsServer, http: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger)
    headers = {**wide_server.auth(ada), "Idempotency-Key": "concurrent-topup-2"}
    forms = [
        {"account_id": ada.account_id, "amount": str(amount), "currency": "GBP"} for amount in (1_000, 3_000)
    ]

    responses = await asyncio.gather(
        *(http.post("/topup", data=forms[n % 2], headers=headers) for n in range(20))
    )

    winners = [r for r in responses if r.status_code == 201]
    losers = [r for r in responses if r.status_code != 201]
    assert len({json.dumps(r.json(), sort_keys=True) for r in winners}) == 1
    amount = winners[0].json()["topup"]["amount"]
    assert len(winners) == 10 and amount in (1_000, 3_000)
    assert {(r.status_code, r.json()["code"]) for r in losers} == {
        (422, "unprocessable.idempotency_key_reused")
    }
    assert await account_state(db, ada.account_id) == (amount, 0)
    assert await verify_ledger(db) == []


# -- (c) retransmissions of one authorisation ------------------------------------------------------------


async def test_20_concurrent_retransmissions_of_one_authorisation_hold_once(
    db: Database, ledger: LedgerService, wide_server: AccountsServer, http: httpx.AsyncClient
) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    body = hold_body(c, "retransmitted-1", 300)

    responses = await asyncio.gather(
        *(http.post("/internal/holds", json=body, headers=wide_server.internal_headers) for _ in range(20))
    )

    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.json()["hold"]["id"] for r in responses}) == 1
    assert {(r.json()["hold"]["status"], r.json()["available"]) for r in responses} == {("active", 700)}
    assert await account_state(db, c.account_id) == (1_000, 300)
    assert await hold_statuses(db, c.account_id) == {("active", None): 1}
    assert (await event_types(db, c.account_id))["account.hold.placed"] == 1
    assert await verify_ledger(db) == []


async def test_20_concurrent_retransmissions_of_a_declined_authorisation_decline_once(
    db: Database, wide_db: Database, ledger: LedgerService
) -> None:
    c = await create_customer(db, ledger, balance=100)

    async def authorise() -> tuple[str, str, str | None]:
        async with wide_db.transaction() as s:
            r = await ledger.place_hold(
                s, account_id=c.account_id, network_txn_id="too-much", amount=101, currency="GBP"
            )
        return r.hold.id, r.hold.status, r.hold.decline_reason

    results = set(await asyncio.gather(*(authorise() for _ in range(20))))
    assert len(results) == 1 and next(iter(results))[1:] == ("declined", "insufficient_funds")
    assert await account_state(db, c.account_id) == (100, 0)


# -- (d) capture and release of one hold, at the same time -------------------------------------------------


async def test_capture_racing_release_has_exactly_one_winner(
    db: Database, ledger: LedgerService, wide_server: AccountsServer, http: httpx.AsyncClient
) -> None:
    """For each of 30 holds, a capture, a retransmitted capture and a release arrive together."""
    shared = await create_customer(db, ledger, balance=30_000)  # 20 holds on one account
    others = [await create_customer(db, ledger, balance=1_000) for _ in range(10)]  # 1 hold each
    holds = [(shared, f"cr-shared-{n}", 100 + n) for n in range(20)]
    holds += [(o, f"cr-other-{n}", 500 + n) for n, o in enumerate(others)]
    headers = wide_server.internal_headers
    for customer, network_txn_id, amount in holds:
        r = await http.post(
            "/internal/holds", json=hold_body(customer, network_txn_id, amount), headers=headers
        )
        assert r.json()["hold"]["status"] == "active"

    async def race(network_txn_id: str, amount: int) -> list[httpx.Response]:
        capture = {"amount": amount - 7}  # the clearing came in a little under the authorisation
        return list(
            await asyncio.gather(
                http.post(f"/internal/holds/{network_txn_id}/capture", json=capture, headers=headers),
                http.post(f"/internal/holds/{network_txn_id}/release", headers=headers),
                http.post(f"/internal/holds/{network_txn_id}/capture", json=capture, headers=headers),
            )
        )

    raced = await asyncio.gather(*(race(ntx, amount) for _, ntx, amount in holds))

    winners: Counter[str] = Counter()
    captured_total: Counter[str] = Counter()
    async with db.read() as s:
        for (customer, network_txn_id, amount), (cap1, rel, cap2) in zip(holds, raced, strict=True):
            final = await repo.hold_by_network_id(s, network_txn_id)
            assert final is not None
            if final.status == "captured":
                winners["capture"] += 1
                # Both captures answer with the one capture; the release is refused.
                for cap in (cap1, cap2):
                    assert cap.status_code == 200, cap.text
                    assert (cap.json()["hold"]["status"], cap.json()["hold"]["captured_amount"]) == (
                        "captured",
                        amount - 7,
                    )
                assert (rel.status_code, rel.json()["code"]) == (409, "conflict.hold_captured")
                assert final.captured_amount == amount - 7
                captured_total[customer.account_id] += amount - 7
            else:
                winners["release"] += 1
                assert final.status == "released"
                assert rel.status_code == 200 and rel.json()["hold"]["status"] == "released"
                for cap in (cap1, cap2):
                    assert (cap.status_code, cap.json()["code"]) == (409, "conflict.hold_not_active")

    assert sum(winners.values()) == len(holds)
    assert await account_state(db, shared.account_id) == (30_000 - captured_total[shared.account_id], 0)
    for o in others:
        assert await account_state(db, o.account_id) == (1_000 - captured_total[o.account_id], 0)
    for customer in (shared, *others):
        await check_event_chain(db, customer.account_id)
        events = await event_types(db, customer.account_id)
        mine = [h for h in holds if h[0] is customer]
        assert events["account.hold.captured"] + events["account.hold.released"] == len(mine)
    assert await verify_ledger(db) == []


async def test_capture_racing_the_expiry_job_has_exactly_one_winner(
    db: Database, wide_db: Database, ledger: LedgerService
) -> None:
    c = await create_customer(db, ledger, balance=10_000)
    past = datetime.now(UTC) - timedelta(minutes=1)
    for n in range(20):
        async with db.transaction() as s:
            await ledger.place_hold(
                s,
                account_id=c.account_id,
                network_txn_id=f"late-{n}",
                amount=100,
                currency="GBP",
                expires_at=past,
            )

    async def capture(n: int) -> str:
        try:
            async with wide_db.transaction() as s:
                r = await ledger.capture_hold(s, network_txn_id=f"late-{n}", amount=100)
        except BankError as exc:
            return exc.code
        return r.hold.status

    results = await asyncio.gather(expire_due_holds(wide_db, ledger), *(capture(n) for n in range(20)))
    expired, captures = results[0], results[1:]
    assert Counter(captures) == Counter({"captured": 20 - expired, "conflict.hold_not_active": expired})
    assert await account_state(db, c.account_id) == (10_000 - 100 * (20 - expired), 0)
    await check_event_chain(db, c.account_id)
    assert await verify_ledger(db) == []


# Payments between customers and pots (issue 23, decision 0037) ---------------------------------------


async def test_100_concurrent_payments_of_70_from_700_move_exactly_10(
    db: Database, ledger: LedgerService, http: httpx.AsyncClient, wide_server: AccountsServer
) -> None:
    jane = await create_customer(db, ledger, balance=700, name="Jane Doe")
    sam = await create_customer(db, ledger, name="Sam Lee")

    async def pay(n: int) -> tuple[int, str]:
        form = {
            "source_account_id": jane.account_id, "amount": "70", "currency": "GBP",
            "recipient": sam.account_id, "reference": f"#{n}", "dedupe_id": f"pay-{n}",
        }  # fmt: skip
        r = await http.post("/payments", data=form, headers=wide_server.auth(jane))
        return r.status_code, r.json().get("code", "")

    answers = Counter(await asyncio.gather(*(pay(n) for n in range(100))))
    assert answers == Counter({(201, ""): 10, (422, "insufficient_funds.available_balance"): 90}), answers
    assert await account_state(db, jane.account_id) == (0, 0)
    assert await account_state(db, sam.account_id) == (700, 0)
    assert (await event_types(db, sam.account_id))["account.payment.received"] == 10
    assert await verify_ledger(db) == []


async def test_any_mix_of_payments_and_pot_moves_leaves_the_sum_of_balances_unchanged(
    db: Database, ledger: LedgerService, http: httpx.AsyncClient, wide_server: AccountsServer
) -> None:
    import random

    people = [await create_customer(db, ledger, balance=1_000, name=f"P{i} X") for i in range(5)]
    pots = []
    for p in people:
        r = await http.post(
            "/pots", data={"current_account_id": p.account_id, "name": "Jar"},
            headers={**wide_server.auth(p), "Idempotency-Key": f"pot-{p.account_id}"},
        )  # fmt: skip
        pots.append(r.json()["id"])

    async def total() -> int:
        async with db.read() as s:
            rows = await s.execute(
                text("SELECT sum(balance) FROM accounts.accounts WHERE kind <> 'internal'")
            )
            return int(rows.scalar_one())

    before = await total()
    rng = random.Random(23)

    async def step(n: int) -> int:
        i = rng.randrange(len(people))
        who, amount = people[i], str(rng.randint(1, 400))
        if n % 3 == 0:
            action, field = rng.choice(
                (("deposit", "source_account_id"), ("withdraw", "destination_account_id"))
            )
            r = await http.put(
                f"/pots/{pots[i]}/{action}", headers=wide_server.auth(who),
                data={field: who.account_id, "amount": amount, "dedupe_id": f"m{n}"},
            )  # fmt: skip
        else:
            to = people[(i + rng.randint(1, len(people) - 1)) % len(people)]
            r = await http.post("/payments", headers=wide_server.auth(who), data={
                "source_account_id": who.account_id, "amount": amount, "currency": "GBP",
                "recipient": to.account_id, "dedupe_id": f"m{n}",
            })  # fmt: skip
        assert r.status_code in (200, 201, 422), r.text
        return r.status_code

    statuses = Counter(await asyncio.gather(*(step(n) for n in range(150))))
    assert statuses[200] + statuses[201] > 20, statuses
    assert await total() == before
    assert await verify_ledger(db) == []
