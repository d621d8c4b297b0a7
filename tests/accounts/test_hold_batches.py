"""`LedgerService.place_holds` and `POST /internal/holds/batch` on real PostgreSQL (decision 0030).

A batch of holds is one transaction and a constant number of set-based statements, but each hold in it
must be decided exactly as if the holds had been placed one at a time, in order: the money a placed hold
reserves is gone for the next; a repeat of a network id (in the batch or before it) gets the first hold;
a bad placement (an unknown account, a network id reused for another hold) fails alone. Provisional holds
wait in `accounts.unconfirmed_holds`; every active hold gets its `account.hold.placed` event.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.accounts.api import place_holds_at_edge
from services.accounts.events import LEDGER_TOPIC, HoldPlaced
from services.accounts.ledger import CARD_SCHEME, HoldRequest
from services.accounts.service import HoldPlacement, HoldResult, LedgerService
from services.accounts.verify import verify_ledger
from shared.db import Database
from shared.errors import BankError
from tests.accounts.conftest import AccountsServer, create_customer

PLACED = HoldPlaced.event_type  # "account.hold.placed"
BATCH_PATH = "/internal/holds/batch"

Answer = HoldResult | BankError
Outcome = tuple[str, str | None]  # (status, decline_reason), or ("error", code)


def placement(account_id: str, network_txn_id: str, amount: int, currency: str = "GBP") -> HoldPlacement:
    return HoldPlacement(HoldRequest(account_id, network_txn_id, amount, currency))


def hold_json(account_id: str, network_txn_id: str, amount: int, currency: str = "GBP") -> dict[str, Any]:
    return {
        "account_id": account_id,
        "network_txn_id": network_txn_id,
        "amount": amount,
        "currency": currency,
    }


def outcome(answer: Answer) -> Outcome:
    if isinstance(answer, BankError):
        return "error", answer.code
    return answer.hold.status, answer.hold.decline_reason


def json_outcome(answer: dict[str, Any]) -> Outcome:
    if "error" in answer:
        return "error", answer["error"]["code"]
    return answer["status"], answer["decline_reason"]


def fresh_prefix() -> str:
    return f"hb{uuid.uuid4().hex[:12]}"


async def place(
    db: Database, ledger: LedgerService, placements: Sequence[HoldPlacement], *, provisional: bool = True
) -> list[Answer]:
    """One batch, in its own transaction, as the api layer runs it (placed again if a concurrent batch
    took one of its network ids first)."""
    return await place_holds_at_edge(db, ledger, list(placements), provisional=provisional)


async def money(db: Database, account_id: str) -> tuple[int, int]:
    """(balance, held) of the account's row."""
    async with db.read() as s:
        row = (
            await s.execute(
                text("SELECT balance, held FROM accounts.accounts WHERE id = :id"), {"id": account_id}
            )
        ).one()
    return int(row.balance), int(row.held)


async def holds_of(db: Database, account_id: str) -> Counter[Outcome]:
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT status, decline_reason FROM accounts.holds WHERE account_id = :a"), {"a": account_id}
        )
        return Counter((status, reason) for status, reason in rows)


async def unconfirmed(db: Database, prefix: str) -> set[str]:
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT network_txn_id FROM accounts.unconfirmed_holds WHERE network_txn_id LIKE :p"),
            {"p": f"{prefix}%"},
        )
        return set(rows.scalars())


async def placed_events(db: Database, prefix: str) -> list[dict[str, Any]]:
    """The `account.hold.placed` events of holds under `prefix`, in outbox order, with key and topic."""
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT topic, key, payload FROM accounts.outbox WHERE event_type = :t ORDER BY id"),
            {"t": PLACED},
        )
        events = [{"topic": t, "key": k, **json.loads(p)["data"]} for t, k, p in rows]
    return [e for e in events if e["network_txn_id"].startswith(prefix)]


# -- (a) money for 10 of 100 ---------------------------------------------------------------------------


async def test_one_batch_of_100_holds_of_70_against_700_places_exactly_the_first_10(
    db: Database, ledger: LedgerService
) -> None:
    ada = await create_customer(db, ledger, balance=700)
    prefix = fresh_prefix()

    answers = await place(db, ledger, [placement(ada.account_id, f"{prefix}-{n}", 70) for n in range(100)])

    assert [outcome(a) for a in answers] == [("active", None)] * 10 + [
        ("declined", "insufficient_funds")
    ] * 90
    results = [a for a in answers if isinstance(a, HoldResult)]
    assert [r.hold.network_txn_id for r in results] == [f"{prefix}-{n}" for n in range(100)]
    assert [(r.account.balance, r.account.available) for r in results[:10]] == [
        (700, 700 - 70 * (n + 1)) for n in range(10)
    ]
    assert await money(db, ada.account_id) == (700, 700)
    assert await holds_of(db, ada.account_id) == {
        ("active", None): 10,
        ("declined", "insufficient_funds"): 90,
    }
    assert await verify_ledger(db) == []


async def test_one_http_batch_of_100_holds_of_70_against_700_places_exactly_the_first_10(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=700)
    prefix = fresh_prefix()
    body = {"holds": [hold_json(ada.account_id, f"{prefix}-{n}", 70) for n in range(100)]}

    r = await client.post(BATCH_PATH, json=body, headers=accounts_server.internal_headers)

    assert r.status_code == 200, r.text
    answers = r.json()["holds"]
    assert [a["network_txn_id"] for a in answers] == [f"{prefix}-{n}" for n in range(100)]
    assert [json_outcome(a) for a in answers] == [("active", None)] * 10 + [
        ("declined", "insufficient_funds")
    ] * 90
    assert await money(db, ada.account_id) == (700, 700)
    assert await holds_of(db, ada.account_id) == {
        ("active", None): 10,
        ("declined", "insufficient_funds"): 90,
    }
    assert await verify_ledger(db) == []


async def test_10_concurrent_http_batches_of_10_holds_of_70_against_700_place_exactly_10(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=700)
    other = await create_customer(db, ledger, balance=350)  # in the same batches, must not interfere
    prefix = fresh_prefix()
    batches = [
        [hold_json(ada.account_id, f"{prefix}-{b}-{n}", 70) for n in range(10)]
        + [hold_json(other.account_id, f"{prefix}-other-{b}", 70)]
        for b in range(10)
    ]

    responses = await asyncio.gather(
        *(
            client.post(BATCH_PATH, json={"holds": b}, headers=accounts_server.internal_headers)
            for b in batches
        )
    )

    assert [r.status_code for r in responses] == [200] * 10
    answers = [r.json()["holds"] for r in responses]
    for batch, batch_answers in zip(batches, answers, strict=True):
        assert [a["network_txn_id"] for a in batch_answers] == [h["network_txn_id"] for h in batch]
        # Within a batch, holds of one size: once one is declined, every later one is.
        mine = [json_outcome(a) for a in batch_answers[:10]]
        placed = mine.count(("active", None))
        assert mine == [("active", None)] * placed + [("declined", "insufficient_funds")] * (10 - placed)
    everything = Counter(json_outcome(a) for batch_answers in answers for a in batch_answers[:10])
    assert everything == {("active", None): 10, ("declined", "insufficient_funds"): 90}
    assert Counter(json_outcome(b[10]) for b in answers) == {
        ("active", None): 5,
        ("declined", "insufficient_funds"): 5,
    }
    assert await money(db, ada.account_id) == (700, 700)
    assert await money(db, other.account_id) == (350, 350)
    assert await holds_of(db, ada.account_id) == {
        ("active", None): 10,
        ("declined", "insufficient_funds"): 90,
    }
    assert await verify_ledger(db) == []


# -- (b) a batch is the same as its placements one at a time ----------------------------------------------

Who = int | Literal["unknown", "internal"]


@dataclass(frozen=True)
class Item:
    """One placement of the batch, in logical terms: `who` is a customer's index (or an account that
    is not a customer's), `nid` a logical network id (`new-k`, or `earlier-j` for a hold placed before)."""

    who: Who
    nid: str
    amount: int
    currency: str


@dataclass(frozen=True)
class Scenario:
    balances: list[int]
    closed: int | None  # the customer whose account is closed (after the earlier holds)
    earlier: list[tuple[int, int]]  # holds placed before the batch: (customer, amount)
    items: list[Item]


amounts = st.one_of(st.integers(1, 400), st.integers(1, 2_500))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    balances = draw(st.lists(st.integers(0, 2_000), min_size=2, max_size=3))
    customers = st.integers(0, len(balances) - 1)
    closed = draw(st.one_of(st.none(), st.none(), customers))
    earlier = draw(st.lists(st.tuples(customers, amounts), max_size=4))
    kinds = ["new"] * 6 + ["repeat", "repeat", "repeat_changed", "unknown", "internal"]
    if earlier:
        kinds += ["earlier", "earlier"]
    items: list[Item] = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(kinds))
        new_id = f"new-{draw(st.integers(0, 12))}"  # a small pool: some collide
        if kind in ("repeat", "repeat_changed") and items:
            item = draw(st.sampled_from(items))
            if kind == "repeat_changed":
                change = draw(st.sampled_from(["amount", "account"]))
                if change == "amount":
                    item = Item(item.who, item.nid, item.amount + 1, item.currency)
                else:
                    item = Item(draw(customers), item.nid, item.amount, item.currency)
        elif kind == "earlier":
            j = draw(st.integers(0, len(earlier) - 1))
            who, amount = earlier[j]
            variant = draw(st.sampled_from(["same", "same", "amount", "account"]))
            if variant == "amount":
                amount += draw(st.sampled_from([-1, 1, 100]))
                amount = max(amount, 1)
            elif variant == "account":
                who = draw(customers)
            item = Item(who, f"earlier-{j}", amount, "GBP")
        else:  # new, not a customer's account, or a repeat while there is nothing to repeat yet
            target: Who = draw(customers)
            if kind == "unknown":
                target = "unknown"
            elif kind == "internal":
                target = "internal"
            currency = draw(st.sampled_from(["GBP"] * 8 + ["EUR"]))
            item = Item(target, new_id, draw(amounts), currency)
        items.append(item)
    return Scenario(balances, closed, earlier, items)


@dataclass
class World:
    """One set of fresh accounts with the scenario's balances, earlier holds and closed account."""

    tag: str
    account_ids: list[str]

    def account(self, who: Who) -> str:
        if who == "unknown":
            return f"acc_unknown_{self.tag}"
        if who == "internal":
            return CARD_SCHEME
        return self.account_ids[who]

    def nid(self, logical: str) -> str:
        return f"{self.tag}-{logical}"

    def logical(self, nid: str) -> str:
        assert nid.startswith(f"{self.tag}-"), nid
        return nid.removeprefix(f"{self.tag}-")

    def who(self, account_id: str) -> int:
        return self.account_ids.index(account_id)

    def placements(self, items: Sequence[Item]) -> list[HoldPlacement]:
        return [placement(self.account(i.who), self.nid(i.nid), i.amount, i.currency) for i in items]


async def new_world(db: Database, ledger: LedgerService, tag: str, scenario: Scenario) -> World:
    customers = [await create_customer(db, ledger, balance=b) for b in scenario.balances]
    world = World(tag, [c.account_id for c in customers])
    for j, (who, amount) in enumerate(scenario.earlier):
        (answer,) = await place(
            db,
            ledger,
            [placement(world.account_ids[who], world.nid(f"earlier-{j}"), amount)],
            provisional=False,
        )
        assert isinstance(answer, HoldResult)
    if scenario.closed is not None:
        async with db.transaction() as s:
            await s.execute(
                text("UPDATE accounts.accounts SET closed = true WHERE id = :id"),
                {"id": world.account_ids[scenario.closed]},
            )
    return world


@dataclass(frozen=True)
class Final:
    """A world's state after the batch, in logical terms (comparable between worlds)."""

    money: list[tuple[int, int]]
    holds: dict[str, tuple[int, int, str, str, str | None]]  # nid -> who, amount, currency, status, reason
    unconfirmed: set[str]
    events: list[tuple[int, str, int, int, int]]  # who, nid, amount, balance, available (outbox order)


async def final_state(db: Database, world: World) -> Final:
    async with db.read() as s:
        hold_rows = await s.execute(
            text(
                "SELECT network_txn_id, account_id, amount, currency, status, decline_reason "
                "FROM accounts.holds WHERE network_txn_id LIKE :p"
            ),
            {"p": f"{world.tag}-%"},
        )
        holds = {
            world.logical(nid): (world.who(account_id), amount, currency, status, reason)
            for nid, account_id, amount, currency, status, reason in hold_rows
        }
    events = [
        (world.who(e["key"]), world.logical(e["network_txn_id"]), e["amount"], e["balance"], e["available"])
        for e in await placed_events(db, f"{world.tag}-")
    ]
    return Final(
        [await money(db, a) for a in world.account_ids],
        holds,
        {world.logical(n) for n in await unconfirmed(db, f"{world.tag}-")},
        events,
    )


PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(scenario=scenarios())
async def test_a_batch_has_the_outcomes_of_its_placements_one_at_a_time(
    db: Database, ledger: LedgerService, scenario: Scenario
) -> None:
    run = fresh_prefix()
    batched = await new_world(db, ledger, f"{run}b", scenario)
    alone = await new_world(db, ledger, f"{run}s", scenario)

    batch_answers = await place(db, ledger, batched.placements(scenario.items))
    one_by_one = [(await place(db, ledger, [p]))[0] for p in alone.placements(scenario.items)]

    assert len(batch_answers) == len(scenario.items)
    assert [outcome(a) for a in batch_answers] == [outcome(a) for a in one_by_one]
    created: set[str] = {f"earlier-{j}" for j in range(len(scenario.earlier))}
    for item, in_batch, single in zip(scenario.items, batch_answers, one_by_one, strict=True):
        if isinstance(in_batch, BankError) or isinstance(single, BankError):
            continue
        # The hold answered is the one under the placement's network id...
        assert batched.logical(in_batch.hold.network_txn_id) == alone.logical(single.hold.network_txn_id)
        assert batched.logical(in_batch.hold.network_txn_id) == item.nid
        if item.nid not in created:  # ...and the one that placed it reports the money just after it
            created.add(item.nid)
            assert (in_batch.account.balance, in_batch.account.available) == (
                single.account.balance,
                single.account.available,
            )
    assert await final_state(db, batched) == await final_state(db, alone)
    assert await verify_ledger(db) == []


# -- (c) a bad placement fails alone -----------------------------------------------------------------------


async def test_an_unknown_account_and_a_reused_id_fail_alone(db: Database, ledger: LedgerService) -> None:
    ada = await create_customer(db, ledger, balance=1_000)
    bob = await create_customer(db, ledger, balance=500)
    p = fresh_prefix()
    (earlier,) = await place(db, ledger, [placement(ada.account_id, f"{p}-earlier", 100)], provisional=False)
    assert outcome(earlier) == ("active", None)

    answers = await place(
        db,
        ledger,
        [
            placement(ada.account_id, f"{p}-1", 200),
            placement(f"acc_nobody_{p}", f"{p}-2", 10),  # no such account
            placement(ada.account_id, f"{p}-earlier", 150),  # an earlier hold's id, another amount
            placement(bob.account_id, f"{p}-earlier", 100),  # an earlier hold's id, another account
            placement(CARD_SCHEME, f"{p}-3", 10),  # not a customer's account
            placement(bob.account_id, f"{p}-4", 300),
            placement(ada.account_id, f"{p}-4", 300),  # this batch's id, another account
            placement(bob.account_id, f"{p}-4", 301),  # this batch's id, another amount
            placement(ada.account_id, f"{p}-earlier", 100),  # the earlier hold, sent again
            placement(ada.account_id, f"{p}-5", 700),
            placement(bob.account_id, f"{p}-6", 201),  # bob has 200 left
        ],
    )

    reused = ("error", "conflict.network_txn_id_reused")
    assert [outcome(a) for a in answers] == [
        ("active", None),
        ("error", "not_found.account"),
        reused,
        reused,
        ("error", "not_found.account"),
        ("active", None),
        reused,
        reused,
        ("active", None),
        ("active", None),
        ("declined", "insufficient_funds"),
    ]
    assert isinstance(answers[8], HoldResult) and isinstance(earlier, HoldResult)
    assert answers[8].hold.id == earlier.hold.id
    assert await money(db, ada.account_id) == (1_000, 1_000)
    assert await money(db, bob.account_id) == (500, 300)
    async with db.read() as s:
        rows = await s.execute(
            text(
                "SELECT network_txn_id, account_id, amount FROM accounts.holds WHERE network_txn_id LIKE :p"
            ),
            {"p": f"{p}-%"},
        )
        assert sorted(tuple(r) for r in rows) == sorted(
            [
                (f"{p}-1", ada.account_id, 200),
                (f"{p}-4", bob.account_id, 300),
                (f"{p}-5", ada.account_id, 700),
                (f"{p}-6", bob.account_id, 201),
                (f"{p}-earlier", ada.account_id, 100),
            ]
        )
    assert await verify_ledger(db) == []


async def test_over_http_a_bad_placement_answers_its_error_and_the_others_are_placed(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=1_000)
    p = fresh_prefix()
    (earlier,) = await place(db, ledger, [placement(ada.account_id, f"{p}-earlier", 100)], provisional=False)
    assert outcome(earlier) == ("active", None)
    body = {
        "holds": [
            hold_json(ada.account_id, f"{p}-1", 300),
            hold_json(f"acc_nobody_{p}", f"{p}-2", 10),
            hold_json(ada.account_id, f"{p}-earlier", 999),
            hold_json(ada.account_id, f"{p}-3", 600),
            hold_json(ada.account_id, f"{p}-4", 1),
        ]
    }

    r = await client.post(BATCH_PATH, json=body, headers=accounts_server.internal_headers)

    assert r.status_code == 200, r.text
    answers = r.json()["holds"]
    assert answers[0] == {"network_txn_id": f"{p}-1", "status": "active", "decline_reason": None}
    assert answers[1]["error"]["code"] == "not_found.account" and answers[1]["error"]["message"]
    assert answers[2]["error"]["code"] == "conflict.network_txn_id_reused" and answers[2]["error"]["message"]
    assert answers[3] == {"network_txn_id": f"{p}-3", "status": "active", "decline_reason": None}
    assert answers[4] == {
        "network_txn_id": f"{p}-4",
        "status": "declined",
        "decline_reason": "insufficient_funds",
    }
    assert await money(db, ada.account_id) == (1_000, 1_000)


# -- (d) provisional holds wait to be confirmed ------------------------------------------------------------


async def test_only_active_provisional_holds_are_unconfirmed(db: Database, ledger: LedgerService) -> None:
    ada = await create_customer(db, ledger, balance=1_000)
    shut = await create_customer(db, ledger, balance=1_000)
    async with db.transaction() as s:
        await s.execute(
            text("UPDATE accounts.accounts SET closed = true WHERE id = :id"), {"id": shut.account_id}
        )
    p = fresh_prefix()

    answers = await place(
        db,
        ledger,
        [
            placement(ada.account_id, f"{p}-a", 300),
            placement(ada.account_id, f"{p}-too-big", 800),
            placement(ada.account_id, f"{p}-euro", 10, "EUR"),
            placement(shut.account_id, f"{p}-closed", 10),
            placement(ada.account_id, f"{p}-a", 300),  # a repeat: still one hold
            placement(f"acc_nobody_{p}", f"{p}-nobody", 10),
            placement(ada.account_id, f"{p}-c", 700),
        ],
        provisional=True,
    )

    assert [outcome(a) for a in answers] == [
        ("active", None),
        ("declined", "insufficient_funds"),
        ("declined", "currency_not_supported"),
        ("declined", "account_closed"),
        ("active", None),
        ("error", "not_found.account"),
        ("active", None),
    ]
    assert await unconfirmed(db, p) == {f"{p}-a", f"{p}-c"}

    # Placed for good: no unconfirmed row, and a repeat of a provisional hold adds none either.
    bob = await create_customer(db, ledger, balance=1_000)
    answers = await place(
        db,
        ledger,
        [
            placement(bob.account_id, f"{p}-for-good", 100),
            placement(bob.account_id, f"{p}-for-good-too-big", 1_000),
            placement(ada.account_id, f"{p}-c", 700),
        ],
        provisional=False,
    )
    assert [outcome(a) for a in answers] == [
        ("active", None),
        ("declined", "insufficient_funds"),
        ("active", None),
    ]
    assert await unconfirmed(db, p) == {f"{p}-a", f"{p}-c"}
    # A later provisional batch repeating them adds nothing either.
    await place(db, ledger, [placement(bob.account_id, f"{p}-for-good", 100)], provisional=True)
    assert await unconfirmed(db, p) == {f"{p}-a", f"{p}-c"}


async def test_holds_placed_over_http_are_provisional_only_when_batched(
    db: Database, ledger: LedgerService, accounts_server: AccountsServer, client: httpx.AsyncClient
) -> None:
    ada = await create_customer(db, ledger, balance=500)
    p = fresh_prefix()
    headers = accounts_server.internal_headers
    body = {"holds": [hold_json(ada.account_id, f"{p}-1", 400), hold_json(ada.account_id, f"{p}-2", 400)]}
    r = await client.post(BATCH_PATH, json=body, headers=headers)
    assert [json_outcome(a) for a in r.json()["holds"]] == [
        ("active", None),
        ("declined", "insufficient_funds"),
    ]

    single = await client.post(
        "/internal/holds", json=hold_json(ada.account_id, f"{p}-3", 100), headers=headers
    )
    assert single.status_code == 200, single.text
    assert single.json()["hold"]["status"] == "active"

    assert await unconfirmed(db, p) == {f"{p}-1"}
    assert await money(db, ada.account_id) == (500, 500)


# -- (e) one event per active hold, with the money just after it ------------------------------------------


async def test_each_active_hold_of_a_batch_has_its_event_with_the_available_balance_after_it(
    db: Database, ledger: LedgerService
) -> None:
    ada = await create_customer(db, ledger, balance=1_000)
    bob = await create_customer(db, ledger, balance=500)
    p = fresh_prefix()
    await place(db, ledger, [placement(ada.account_id, f"{p}-earlier", 100)], provisional=False)
    before = await placed_events(db, p)
    assert [e["network_txn_id"] for e in before] == [f"{p}-earlier"]

    answers = await place(
        db,
        ledger,
        [
            placement(ada.account_id, f"{p}-1", 300),
            placement(bob.account_id, f"{p}-2", 200),
            placement(ada.account_id, f"{p}-3", 700),  # 600 left: declined
            placement(ada.account_id, f"{p}-earlier", 100),  # a repeat: no second event
            placement(bob.account_id, f"{p}-4", 300),
            placement(ada.account_id, f"{p}-1", 300),  # a repeat in the batch: no second event
            placement(ada.account_id, f"{p}-5", 600),
            placement(bob.account_id, f"{p}-6", 1),  # declined
            placement(ada.account_id, f"{p}-7", 5, "EUR"),  # declined
            placement(f"acc_nobody_{p}", f"{p}-8", 5),  # refused
        ],
    )

    holds = {a.hold.network_txn_id: a.hold.id for a in answers if isinstance(a, HoldResult)}
    events = (await placed_events(db, p))[1:]
    expected = [
        (ada.account_id, f"{p}-1", 300, 1_000, 600),
        (bob.account_id, f"{p}-2", 200, 500, 300),
        (bob.account_id, f"{p}-4", 300, 500, 0),
        (ada.account_id, f"{p}-5", 600, 1_000, 0),
    ]
    assert [
        (e["key"], e["network_txn_id"], -e["amount"], e["balance"], e["available"]) for e in events
    ] == expected
    for e in events:
        assert e["topic"] == LEDGER_TOPIC and e["account_id"] == e["key"] and e["currency"] == "GBP"
        assert e["hold_id"] == holds[e["network_txn_id"]]
    assert await money(db, ada.account_id) == (1_000, 1_000)
    assert await money(db, bob.account_id) == (500, 500)


# -- a batch racing another batch for one network id --------------------------------------------------------


async def _waiting_on_a_lock(db: Database) -> bool:
    async with db.read() as s:
        waiting = await s.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_a_hold_lost_to_a_concurrent_batch_reserves_nothing_for_the_holds_after_it(
    db: Database, ledger: LedgerService
) -> None:
    """A batch decides a hold under a network id that another, not yet committed, batch is placing on
    another account. When that other batch commits first, the placement is a reused id, and must not
    have taken money from the holds after it on its account: the outcome must be that of the batches
    one after the other."""
    ada = await create_customer(db, ledger, balance=1_000)
    bob = await create_customer(db, ledger, balance=150)
    p = fresh_prefix()
    async with db.fast_transaction() as first:
        (taken,) = await ledger.place_holds(
            first, [placement(ada.account_id, f"{p}-x", 100)], provisional=True
        )
        assert outcome(taken) == ("active", None)
        second = asyncio.create_task(
            place(
                db,
                ledger,
                [
                    placement(bob.account_id, f"{p}-x", 100),  # the same id, on bob's account
                    placement(bob.account_id, f"{p}-y", 100),
                    placement(bob.account_id, f"{p}-z", 40),
                ],
            )
        )
        for _ in range(500):  # until the second batch waits for the first's network id
            if await _waiting_on_a_lock(db):
                break
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError("the second batch never waited for the first")
    answers = await second

    # The batches one after the other: x is a reused id, and bob's 150 are all there for y and z, whose
    # events report bob's money as it is.
    events = [(e["network_txn_id"], e["available"]) for e in await placed_events(db, f"{p}-")]
    assert ([outcome(a) for a in answers], await money(db, bob.account_id), events[1:]) == (
        [("error", "conflict.network_txn_id_reused"), ("active", None), ("active", None)],
        (150, 140),
        [(f"{p}-y", 50), (f"{p}-z", 10)],
    )
