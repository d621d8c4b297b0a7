"""Property tests of the ledger on real PostgreSQL: random operation sequences against a pure model.

Hypothesis draws 2-3 customers with opening balances and a list of operations over them: top-ups, holds
(sometimes beyond the available balance, sometimes in another currency, sometimes already past their
expiry), captures (for the held amount, less, or more, within or beyond the over-capture tolerance),
releases, forced debits and refunds, the expiry job, and retransmissions of the network's messages.

Each operation runs through `LedgerService` in its own transaction, as the api layer would, and the same
operation is applied to a plain-Python model of what the ledger should do. After every step the database
must agree with the model: each account's balance, held and available amounts, every hold's status, the
journal entries and the postings (customer and internal accounts alike: every entry balances, and a
retransmission never posts twice), and the outbox events with the balances they report. At the end of
each example `verify_ledger` must find nothing anywhere in the database, and all postings sum to zero.

A second property runs a batch of operations concurrently and checks what must hold whatever order the
row locks granted: money is conserved, held equals the active holds, and each account's events replay.

Each example gets fresh customers, so examples never see each other's accounts.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.accounts.jobs import expire_due_holds
from services.accounts.ledger import CARD_SCHEME, TOPUP_FUNDING
from services.accounts.service import LedgerService
from services.accounts.verify import verify_ledger
from shared.db import Database
from shared.errors import BankError
from tests.accounts.conftest import Customer, create_customer

# LEDGER_PROPERTY_EXAMPLES=1000 for a soak run; the default keeps the suite quick.
EXAMPLES = int(os.environ.get("LEDGER_PROPERTY_EXAMPLES", "40"))
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- operations ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopUp:
    who: int
    amount: int


@dataclass(frozen=True)
class PlaceHold:
    who: int
    amount: int
    currency: str = "GBP"
    past_expiry: bool = False


@dataclass(frozen=True)
class RepeatHold:
    """The network sends an authorisation again with the same network id."""

    ref: int
    variant: Literal["same", "other_amount", "other_account"] = "same"


@dataclass(frozen=True)
class Capture:
    ref: int
    delta: int  # the clearing amount is the hold's amount plus this
    tolerance: int


@dataclass(frozen=True)
class Release:
    ref: int


@dataclass(frozen=True)
class ForcePost:
    who: int
    amount: int
    kind: Literal["debit", "credit"]


@dataclass(frozen=True)
class RepeatForce:
    ref: int


@dataclass(frozen=True)
class Expire:
    pass


Op = TopUp | PlaceHold | RepeatHold | Capture | Release | ForcePost | RepeatForce | Expire

# How often each kind of step is drawn. A "lifecycle" is a hold followed at once by what the network
# does with it next (capture, release, retransmission, expiry), so that those paths are well exercised;
# the lone operations reach back to older holds, in any state, by `ref`.
WEIGHTS = {"lifecycle": 5, "topup": 2, "hold": 2, "repeat_hold": 1, "capture": 2, "release": 1,
           "force": 2, "repeat_force": 1, "expire": 1}  # fmt: skip
KINDS = [kind for kind, weight in WEIGHTS.items() for _ in range(weight)]

customer = st.integers(0, 2)
hold_ref = st.one_of(st.integers(0, 2), st.integers(0, 30))  # 0: the newest hold


def place_hold(draw: st.DrawFn, past_expiry: bool | None = None) -> PlaceHold:
    amount = draw(st.one_of(st.integers(1, 1_500), st.integers(1, 8_000)))
    currency = draw(st.sampled_from(["GBP"] * 9 + ["EUR"]))
    if past_expiry is None:
        past_expiry = draw(st.sampled_from([False, False, True]))
    return PlaceHold(draw(customer), amount, currency, past_expiry)


def capture(draw: st.DrawFn, ref: int) -> Capture:
    delta = draw(
        st.one_of(
            st.just(0), st.sampled_from([-1, 1, 99, 100, 101, 499, 500, 501]), st.integers(-2_000, 1_000)
        )
    )
    return Capture(ref, delta, tolerance=draw(st.sampled_from([0, 0, 100, 500, 2_000])))


@st.composite
def steps(draw: st.DrawFn) -> list[Op]:
    """One or a few operations."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "lifecycle":
        thens = draw(
            st.lists(
                st.sampled_from(["capture", "capture", "release", "repeat", "expire"]), min_size=1, max_size=3
            )
        )
        follow: list[Op] = [place_hold(draw, past_expiry=draw(st.booleans()) if "expire" in thens else None)]
        for then in thens:
            if then == "capture":
                follow.append(capture(draw, 0))
            elif then == "release":
                follow.append(Release(0))
            elif then == "repeat":
                follow.append(
                    RepeatHold(0, draw(st.sampled_from(["same", "same", "other_amount", "other_account"])))
                )
            else:
                follow.append(Expire())
        return follow
    if kind == "topup":
        return [TopUp(draw(customer), draw(st.integers(1, 5_000)))]
    if kind == "hold":
        return [place_hold(draw)]
    if kind == "repeat_hold":
        return [RepeatHold(draw(hold_ref), draw(st.sampled_from(["same", "other_amount", "other_account"])))]
    if kind == "capture":
        return [capture(draw, draw(hold_ref))]
    if kind == "release":
        return [Release(draw(hold_ref))]
    if kind == "force":
        return [
            ForcePost(draw(customer), draw(st.integers(1, 4_000)), draw(st.sampled_from(["debit", "credit"])))
        ]
    if kind == "repeat_force":
        return [RepeatForce(draw(st.integers(0, 5)))]
    return [Expire()]


operation_lists = st.lists(steps(), min_size=2, max_size=12).map(
    lambda chunks: [op for c in chunks for op in c]
)


# -- the model -----------------------------------------------------------------------------------------


@dataclass
class ModelAccount:
    id: str
    user_id: str
    balance: int
    held: int = 0
    may_be_negative: bool = False  # a forced debit or an over-capture has hit this account

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass
class ModelHold:
    network_txn_id: str
    who: int
    amount: int
    currency: str
    status: str
    decline_reason: str | None
    past_expiry: bool
    captured: int | None = None


@dataclass
class ModelForce:
    network_txn_id: str
    who: int
    amount: int
    kind: Literal["debit", "credit"]
    entry_id: str


Event = tuple[str, str, int | None, int | None, int | None]  # key, type, amount, balance, available


@dataclass
class Model:
    accounts: list[ModelAccount]
    holds: list[ModelHold] = field(default_factory=list)
    forces: list[ModelForce] = field(default_factory=list)
    scheme: int = 0  # this example's postings on the card scheme settlement account
    funding: int = 0  # … and on the top-up funding account
    entries: int = 0  # journal entries of this example's accounts
    events: list[Event] = field(default_factory=list)

    def emit(self, account: ModelAccount, event_type: str, amount: int) -> None:
        self.events.append((account.id, event_type, amount, account.balance, account.available))

    def hold(self, ref: int) -> ModelHold | None:
        """The ref-th newest hold (ref 0: the latest), wrapping round."""
        return self.holds[-1 - ref % len(self.holds)] if self.holds else None

    def account_of(self, who: int) -> ModelAccount:
        return self.accounts[who % len(self.accounts)]


@dataclass(frozen=True)
class Outcome:
    """What an operation did: the error code it raised, or None; plus what it returned."""

    error: str | None = None
    returned: tuple[Any, ...] = ()


# -- running one step on the ledger and on the model ---------------------------------------------------


class Runner:
    def __init__(self, db: Database, ledger: LedgerService, model: Model) -> None:
        self.db, self.ledger, self.model = db, ledger, model
        self.prefix = f"p{uuid.uuid4().hex[:10]}"
        self.counter = 0

    def network_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}-{self.counter}"

    async def step(self, op: Op) -> None:
        """Run `op` for real and in the model; the two must agree on the outcome."""
        if isinstance(op, TopUp):
            await self.topup(op)
        elif isinstance(op, PlaceHold):
            await self.place_hold(op)
        elif isinstance(op, RepeatHold):
            await self.repeat_hold(op)
        elif isinstance(op, Capture):
            await self.capture(op)
        elif isinstance(op, Release):
            await self.release(op)
        elif isinstance(op, ForcePost):
            await self.force_post(op)
        elif isinstance(op, RepeatForce):
            await self.repeat_force(op)
        else:
            await self.expire()

    async def topup(self, op: TopUp) -> None:
        account = self.model.account_of(op.who)
        async with self.db.transaction() as s:
            _, real = await self.ledger.topup(s, account.user_id, account.id, op.amount, "GBP")
        account.balance += op.amount
        self.model.funding -= op.amount
        self.model.entries += 1
        self.model.emit(account, "account.topup.completed", op.amount)
        assert (real.balance, real.available) == (account.balance, account.available)

    async def place_hold(self, op: PlaceHold) -> None:
        account = self.model.account_of(op.who)
        network_txn_id = self.network_id()
        now = datetime.now(UTC)
        expires_at = now - timedelta(hours=1) if op.past_expiry else now + timedelta(days=7)
        async with self.db.transaction() as s:
            result = await self.ledger.place_hold(
                s, account_id=account.id, network_txn_id=network_txn_id, amount=op.amount,
                currency=op.currency, expires_at=expires_at,
            )  # fmt: skip
        before = account.available
        if op.currency != "GBP":
            reason: str | None = "currency_not_supported"
        elif op.amount > before:
            reason = "insufficient_funds"
        else:
            reason = None
        status = "declined" if reason else "active"
        hold = ModelHold(network_txn_id, op.who % len(self.model.accounts), op.amount, op.currency,
                         status, reason, op.past_expiry)  # fmt: skip
        self.model.holds.append(hold)
        if reason is None:
            account.held += op.amount
            self.model.emit(account, "account.hold.placed", -op.amount)
            # Prepaid: an approved authorisation never takes the available balance below zero.
            assert account.available >= 0
        event(f"hold {reason or 'approved'}")
        assert (result.hold.status, result.hold.decline_reason) == (status, reason)
        assert (result.account.balance, result.account.available) == (account.balance, account.available)

    async def repeat_hold(self, op: RepeatHold) -> None:
        hold = self.model.hold(op.ref)
        if hold is None:
            return
        account = self.model.accounts[hold.who]
        target, amount = account, hold.amount
        if op.variant == "other_amount":
            amount += 1
        elif op.variant == "other_account":
            target = self.model.accounts[(hold.who + 1) % len(self.model.accounts)]
        outcome = await self.attempt(
            self.ledger.place_hold,
            account_id=target.id, network_txn_id=hold.network_txn_id, amount=amount, currency=hold.currency,
        )  # fmt: skip
        if op.variant == "same":
            # A retransmission is answered like the original and changes nothing.
            assert outcome == Outcome(None, (hold.status, account.balance, account.available))
        else:
            assert outcome.error == "conflict.network_txn_id_reused"

    async def capture(self, op: Capture) -> None:
        hold = self.model.hold(op.ref)
        if hold is None:
            return
        account = self.model.accounts[hold.who]
        amount, status_before = hold.amount + op.delta, hold.status
        outcome = await self.attempt(
            self.ledger.capture_hold,
            network_txn_id=hold.network_txn_id, amount=amount, over_capture_tolerance=op.tolerance,
        )  # fmt: skip
        if hold.status == "captured":
            expected = Outcome(None, ("captured", account.balance, account.available))
        elif hold.status != "active":
            expected = Outcome("conflict.hold_not_active")
        elif not 0 < amount <= hold.amount + op.tolerance:
            expected = Outcome("unprocessable.capture_exceeds_hold")
        else:
            hold.status, hold.captured = "captured", amount
            account.held -= hold.amount
            account.balance -= amount
            account.may_be_negative |= amount > hold.amount
            self.model.scheme += amount
            self.model.entries += 1
            self.model.emit(account, "account.hold.captured", -amount)
            expected = Outcome(None, ("captured", account.balance, account.available))
        event(f"capture of a {status_before} hold: {expected.error or 'captured'}")
        assert outcome == expected, (op, hold)

    async def release(self, op: Release) -> None:
        hold = self.model.hold(op.ref)
        if hold is None:
            return
        account, status_before = self.model.accounts[hold.who], hold.status
        outcome = await self.attempt(self.ledger.release_hold, network_txn_id=hold.network_txn_id)
        if hold.status == "captured":
            expected = Outcome("conflict.hold_captured")
        else:
            if hold.status == "active":
                hold.status = "released"
                account.held -= hold.amount
                self.model.emit(account, "account.hold.released", hold.amount)
            expected = Outcome(None, (hold.status, account.balance, account.available))
        event(f"release of a {status_before} hold: {expected.error or 'ok'}")
        assert outcome == expected, (op, hold)

    async def force_post(self, op: ForcePost) -> None:
        account = self.model.account_of(op.who)
        network_txn_id = self.network_id()
        async with self.db.transaction() as s:
            result = await self.ledger.force_post(
                s, account_id=account.id, network_txn_id=network_txn_id, amount=op.amount,
                currency="GBP", kind=op.kind,
            )  # fmt: skip
        signed = -op.amount if op.kind == "debit" else op.amount
        account.balance += signed
        account.may_be_negative |= op.kind == "debit"
        self.model.scheme -= signed
        self.model.entries += 1
        self.model.emit(account, "account.posted", signed)
        self.model.forces.append(
            ModelForce(network_txn_id, op.who % len(self.model.accounts), op.amount, op.kind, result.entry_id)
        )
        assert (result.account.balance, result.account.available) == (account.balance, account.available)

    async def repeat_force(self, op: RepeatForce) -> None:
        if not self.model.forces:
            return
        force = self.model.forces[-1 - op.ref % len(self.model.forces)]
        account = self.model.accounts[force.who]
        async with self.db.transaction() as s:
            result = await self.ledger.force_post(
                s, account_id=account.id, network_txn_id=force.network_txn_id, amount=force.amount,
                currency="GBP", kind=force.kind,
            )  # fmt: skip
        assert result.entry_id == force.entry_id
        assert (result.account.balance, result.account.available) == (account.balance, account.available)

    async def expire(self) -> None:
        expired = await expire_due_holds(self.db, self.ledger)
        due = [h for h in self.model.holds if h.status == "active" and h.past_expiry]
        for hold in due:
            account = self.model.accounts[hold.who]
            hold.status = "expired"
            account.held -= hold.amount
            self.model.emit(account, "account.hold.expired", hold.amount)
        event(f"expired {min(len(due), 2)}+")
        assert expired == len(due)

    async def attempt(self, method: Any, **kwargs: Any) -> Outcome:
        """Call a hold method in its own transaction; a BankError rolls it back and is the outcome."""
        try:
            async with self.db.transaction() as s:
                result = await method(s, **kwargs)
        except BankError as exc:
            return Outcome(exc.code)
        return Outcome(None, (result.hold.status, result.account.balance, result.account.available))


# -- comparing the database with the model -------------------------------------------------------------


async def check_against_model(db: Database, model: Model, *, whole_ledger: bool = False) -> None:
    """The database agrees with the model; with `whole_ledger`, `verify_ledger` finds nothing anywhere."""
    ids = [a.id for a in model.accounts]
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT id, balance, held FROM accounts.accounts WHERE id = ANY(:ids)"), {"ids": ids}
        )
        found = {r.id: (r.balance, r.held) for r in rows}
        holds = await s.execute(
            text(
                "SELECT network_txn_id, account_id, amount, currency, status, decline_reason, "
                "captured_amount FROM accounts.holds WHERE account_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
        hold_rows = {r.network_txn_id: tuple(r)[1:] for r in holds}
        postings = list(
            await s.execute(
                text(
                    "SELECT e.id, p.account_id, p.amount, p.currency FROM accounts.journal_entries e "
                    "LEFT JOIN accounts.postings p ON p.entry_id = e.id WHERE e.account_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        )
        outbox = await s.execute(
            text("SELECT key, event_type, payload FROM accounts.outbox WHERE key = ANY(:ids) ORDER BY id"),
            {"ids": ids},
        )
        events: list[Event] = []
        for key, event_type, payload in outbox:
            data = json.loads(payload)["data"]
            events.append((key, event_type, data.get("amount"), data.get("balance"), data.get("available")))

    assert found == {a.id: (a.balance, a.held) for a in model.accounts}
    assert hold_rows == {
        h.network_txn_id: (
            model.accounts[h.who].id,
            h.amount,
            h.currency,
            h.status,
            h.decline_reason,
            h.captured,
        )
        for h in model.holds
    }
    for account in model.accounts:
        # held is the sum of the active holds; available = balance - held, below zero only after a
        # forced debit or an over-capture.
        active = [row[1] for row in hold_rows.values() if row[0] == account.id and row[3] == "active"]
        assert sum(active) == account.held
        if account.balance - account.held < 0:
            event("available below zero")
            assert account.may_be_negative, account

    # Every entry of these accounts balances; the postings sum to the balances the model expects, on the
    # customer accounts and on the internal ones; a retransmission never posts twice.
    by_entry: dict[tuple[str, str], int] = {}
    by_account: dict[str, int] = {}
    for entry_id, account_id, amount, currency in postings:
        assert amount is not None, f"journal entry {entry_id} has no postings"
        by_entry[entry_id, currency] = by_entry.get((entry_id, currency), 0) + amount
        by_account[account_id] = by_account.get(account_id, 0) + amount
    assert {k: v for k, v in by_entry.items() if v} == {}
    assert len({entry_id for entry_id, _ in by_entry}) == model.entries
    expected = {a.id: a.balance for a in model.accounts} | {
        CARD_SCHEME: model.scheme,
        TOPUP_FUNDING: model.funding,
    }
    assert {k: v for k, v in by_account.items() if v} == {k: v for k, v in expected.items() if v}
    # One event per change, none for a retransmission, each with the balances after that change.
    assert events == model.events
    if whole_ledger:
        assert await verify_ledger(db) == []
        assert await sum_of_all_postings(db) == 0


async def sum_of_all_postings(db: Database) -> int:
    async with db.read() as s:
        return int(await s.scalar(text("SELECT coalesce(sum(amount), 0) FROM accounts.postings")) or 0)


async def expire_leftovers(db: Database, ledger: LedgerService) -> None:
    """Expire holds past their expiry that earlier examples left active, so the job's count is ours."""
    while await expire_due_holds(db, ledger):
        pass


async def new_model(db: Database, ledger: LedgerService, balances: Sequence[int]) -> Model:
    customers = [await create_customer(db, ledger, balance=b) for b in balances]
    model = Model(
        [ModelAccount(c.account_id, c.user_id, b) for c, b in zip(customers, balances, strict=True)]
    )
    for account in model.accounts:
        model.events.append((account.id, "account.created", None, None, None))
        if account.balance:
            model.funding -= account.balance
            model.entries += 1
            model.emit(account, "account.topup.completed", account.balance)
    return model


# -- the properties ------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    balances=st.lists(st.one_of(st.integers(0, 10_000), st.integers(3_000, 10_000)), min_size=2, max_size=3),
    ops=operation_lists,
)
async def test_random_operations_agree_with_the_model(
    db: Database, ledger: LedgerService, balances: list[int], ops: list[Op]
) -> None:
    await expire_leftovers(db, ledger)
    model = await new_model(db, ledger, balances)
    runner = Runner(db, ledger, model)
    await check_against_model(db, model)
    for index, op in enumerate(ops):
        try:
            await runner.step(op)
            await check_against_model(db, model, whole_ledger=index == len(ops) - 1)
        except AssertionError as exc:
            raise AssertionError(f"step {index}: {op!r}") from exc


@dataclass(frozen=True)
class ConcurrentOp:
    kind: Literal["hold", "repeat_hold", "capture", "release", "topup", "expire"]
    who: int
    amount: int
    ref: int


concurrent_operations = st.builds(
    ConcurrentOp,
    st.sampled_from(["hold", "hold", "repeat_hold", "capture", "capture", "release", "topup", "expire"]),
    st.integers(0, 1),
    st.integers(1, 3_000),
    st.integers(0, 7),
)


@pytest_asyncio.fixture(loop_scope="session")
async def wide_db(db: Database, database_url: str) -> AsyncIterator[Database]:
    """A pool wide enough for every operation of a batch to hold its own connection at once."""
    wide = Database(database_url, pool_size=20, application_name="tests-concurrent")
    yield wide
    await wide.dispose()


@settings(PROPERTY_SETTINGS, max_examples=max(1, EXAMPLES * 3 // 4))
@given(
    balances=st.lists(st.integers(0, 8_000), min_size=2, max_size=2),
    setup_holds=st.lists(
        st.tuples(st.integers(0, 1), st.integers(1, 3_000), st.booleans()), min_size=1, max_size=8
    ),
    batch=st.lists(concurrent_operations, min_size=2, max_size=16),
)
async def test_concurrent_operations_keep_the_ledger_sound(
    db: Database,
    wide_db: Database,
    ledger: LedgerService,
    balances: list[int],
    setup_holds: list[tuple[int, int, bool]],
    batch: list[ConcurrentOp],
) -> None:
    """Whatever order the row locks grant, money is conserved and every account's events replay.

    No forced debits and no over-captures here, so no available balance may ever go below zero.
    """
    await expire_leftovers(db, ledger)
    customers = [await create_customer(db, ledger, balance=b) for b in balances]
    prefix = f"c{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    placed: list[tuple[str, int, int]] = []  # network id, customer index, amount
    for n, (owner, amount, past) in enumerate(setup_holds):
        network_txn_id = f"{prefix}-setup-{n}"
        async with db.transaction() as s:
            await ledger.place_hold(
                s, account_id=customers[owner].account_id, network_txn_id=network_txn_id, amount=amount,
                currency="GBP", expires_at=now - timedelta(hours=1) if past else now + timedelta(days=7),
            )  # fmt: skip
        placed.append((network_txn_id, owner, amount))
    start = await account_rows(db, customers)

    async def run(n: int, op: ConcurrentOp) -> tuple[str, Any]:
        network_txn_id, owner, held_amount = placed[op.ref % len(placed)]
        customer = customers[op.who]
        try:
            if op.kind == "expire":  # the job: its own transaction per due hold
                return "ok", await expire_due_holds(wide_db, ledger)
            async with wide_db.transaction() as s:
                if op.kind == "hold":
                    r = await ledger.place_hold(
                        s, account_id=customer.account_id, network_txn_id=f"{prefix}-{n}",
                        amount=op.amount, currency="GBP",
                    )  # fmt: skip
                    return "ok", r.hold.status
                if op.kind == "repeat_hold":
                    r = await ledger.place_hold(
                        s, account_id=customers[owner].account_id, network_txn_id=network_txn_id,
                        amount=held_amount, currency="GBP",
                    )  # fmt: skip
                    return "ok", r.hold.status
                if op.kind == "capture":
                    amount = min(op.amount, held_amount)
                    r = await ledger.capture_hold(s, network_txn_id=network_txn_id, amount=amount)
                    return "ok", (r.hold.status, r.hold.captured_amount)
                if op.kind == "release":
                    r = await ledger.release_hold(s, network_txn_id=network_txn_id)
                    return "ok", r.hold.status
                await ledger.topup(s, customer.user_id, customer.account_id, op.amount, "GBP")
                return "ok", op.amount
        except BankError as exc:
            return "error", exc.code

    results = await asyncio.gather(*(run(n, op) for n, op in enumerate(batch)))

    allowed_errors = {
        "capture": {"conflict.hold_not_active"},  # released or expired first
        "release": {"conflict.hold_captured"},
    }
    for op, (status, value) in zip(batch, results, strict=True):
        if status == "error":
            assert value in allowed_errors.get(op.kind, set()), (op, value)

    async with db.read() as s:
        holds = {
            r.network_txn_id: r
            for r in await s.execute(
                text(
                    "SELECT network_txn_id, account_id, amount, status, captured_amount FROM accounts.holds "
                    "WHERE network_txn_id LIKE :p"
                ),
                {"p": f"{prefix}-%"},
            )
        }
    # Exactly one outcome per hold, and every caller was told the hold's final state.
    for op, (status, value) in zip(batch, results, strict=True):
        if status != "ok" or op.kind not in ("capture", "release", "repeat_hold"):
            continue
        final = holds[placed[op.ref % len(placed)][0]]
        if op.kind == "capture":
            assert value == ("captured", final.captured_amount) and final.status == "captured"
        elif op.kind == "release":
            assert value in ("released", "expired", "declined") and value == final.status
    assert len(holds) == len(placed) + sum(op.kind == "hold" for op in batch)

    end = await account_rows(db, customers)
    topups = {c.account_id: 0 for c in customers}
    for op, (status, _) in zip(batch, results, strict=True):
        if op.kind == "topup" and status == "ok":
            topups[customers[op.who].account_id] += op.amount
    for c in customers:
        mine = [h for h in holds.values() if h.account_id == c.account_id]
        captured = sum(h.captured_amount for h in mine if h.status == "captured")
        active = sum(h.amount for h in mine if h.status == "active")
        balance, held = end[c.account_id]
        assert balance == start[c.account_id][0] + topups[c.account_id] - captured
        assert held == active
        assert balance - held >= 0, (c, balance, held)
    await check_event_replay(db, customers)
    assert await verify_ledger(db) == []
    assert await sum_of_all_postings(db) == 0


async def account_rows(db: Database, customers: list[Customer]) -> dict[str, tuple[int, int]]:
    async with db.read() as s:
        rows = await s.execute(
            text("SELECT id, balance, held FROM accounts.accounts WHERE id = ANY(:ids)"),
            {"ids": [c.account_id for c in customers]},
        )
        return {r.id: (r.balance, r.held) for r in rows}


async def check_event_replay(db: Database, customers: list[Customer]) -> None:
    """Each account's events, in outbox order, are a gap-free chain of (balance, available) states."""
    async with db.read() as s:
        rows = list(
            await s.execute(
                text(
                    "SELECT key, event_type, payload FROM accounts.outbox WHERE key = ANY(:ids) ORDER BY id"
                ),
                {"ids": [c.account_id for c in customers]},
            )
        )
    end = await account_rows(db, customers)
    for c in customers:
        balance, available = 0, 0
        for key, event_type, payload in rows:
            if key != c.account_id or event_type == "account.created":
                continue
            data = json.loads(payload)["data"]
            amount = data["amount"]
            if event_type == "account.topup.completed":
                balance, available = balance + amount, available + amount
            elif event_type == "account.hold.placed":
                available += amount
            elif event_type in ("account.hold.released", "account.hold.expired"):
                available += amount
            elif event_type == "account.hold.captured":
                balance += amount
                available += amount + data["held_amount"]
            else:
                raise AssertionError(f"unexpected event {event_type}")
            assert (data["balance"], data["available"]) == (balance, available), (event_type, data)
        assert (balance, available) == (end[c.account_id][0], end[c.account_id][0] - end[c.account_id][1])
