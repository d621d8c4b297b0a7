"""The ledger on real PostgreSQL: top-ups, holds, captures, releases, forced postings, expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.accounts import repository as repo
from services.accounts.api import place_holds_at_edge
from services.accounts.jobs import expire_due_holds
from services.accounts.ledger import CARD_SCHEME, TOPUP_FUNDING, HoldRequest
from services.accounts.service import HoldPlacement, LedgerService
from services.accounts.verify import verify_ledger
from shared.db import Database
from shared.errors import BankError
from tests.accounts.conftest import create_customer


async def account_state(db: Database, account_id: str) -> tuple[int, int]:
    async with db.read() as s:
        account = await repo.get_account(s, account_id)
        assert account is not None
        return account.balance, account.held


async def events(db: Database) -> list[str]:
    async with db.read() as s:
        return list((await s.execute(text("SELECT event_type FROM accounts.outbox ORDER BY id"))).scalars())


async def test_topup_moves_money_from_funding_and_emits(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=10_000)
    assert await account_state(db, c.account_id) == (10_000, 0)
    assert await events(db) == ["account.created", "account.topup.completed"]
    async with db.read() as s:
        balances = await repo.balances_from_postings(s)
    assert balances[TOPUP_FUNDING] == -10_000 and balances[c.account_id] == 10_000
    assert await verify_ledger(db) == []


async def test_hold_capture_for_a_different_amount(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=5_000)
    async with db.transaction() as s:
        placed = await ledger.place_hold(
            s, account_id=c.account_id, network_txn_id="n1", amount=1_500, currency="GBP"
        )
    assert placed.hold.status == "active" and placed.account.available == 3_500
    assert await account_state(db, c.account_id) == (5_000, 1_500)

    async with db.transaction() as s:  # a tip: cleared above the authorisation, within tolerance
        captured = await ledger.capture_hold(s, network_txn_id="n1", amount=1_800, over_capture_tolerance=500)
    assert captured.hold.status == "captured" and captured.hold.captured_amount == 1_800
    assert await account_state(db, c.account_id) == (3_200, 0)
    async with db.read() as s:
        assert (await repo.balances_from_postings(s))[CARD_SCHEME] == 1_800
    assert await verify_ledger(db) == []

    async with db.transaction() as s:  # the network repeats the clearing: no second debit
        again = await ledger.capture_hold(s, network_txn_id="n1", amount=1_800)
    assert again.hold.captured_amount == 1_800
    assert await account_state(db, c.account_id) == (3_200, 0)


async def test_capture_beyond_tolerance_is_refused(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=5_000)
    async with db.transaction() as s:
        await ledger.place_hold(s, account_id=c.account_id, network_txn_id="n1", amount=1_000, currency="GBP")
    with pytest.raises(BankError) as err:
        async with db.transaction() as s:
            await ledger.capture_hold(s, network_txn_id="n1", amount=1_600, over_capture_tolerance=500)
    assert err.value.code == "unprocessable.capture_exceeds_hold" and err.value.status == 422
    assert await account_state(db, c.account_id) == (5_000, 1_000)


async def test_insufficient_funds_is_a_recorded_decline(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    async with db.transaction() as s:
        result = await ledger.place_hold(
            s, account_id=c.account_id, network_txn_id="n1", amount=1_001, currency="GBP"
        )
    assert (result.hold.status, result.hold.decline_reason) == ("declined", "insufficient_funds")
    assert await account_state(db, c.account_id) == (1_000, 0)
    async with db.transaction() as s:  # a retransmission gets the same answer
        retry = await ledger.place_hold(
            s, account_id=c.account_id, network_txn_id="n1", amount=1_001, currency="GBP"
        )
    assert retry.hold.id == result.hold.id and retry.hold.status == "declined"


async def test_exact_balance_is_approved_and_a_penny_more_is_not(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    async with db.transaction() as s:
        first = await ledger.place_hold(
            s, account_id=c.account_id, network_txn_id="a", amount=1_000, currency="GBP"
        )
        second = await ledger.place_hold(
            s, account_id=c.account_id, network_txn_id="b", amount=1, currency="GBP"
        )
    assert first.hold.status == "active" and second.hold.decline_reason == "insufficient_funds"


async def test_same_network_id_for_a_different_hold_is_a_conflict(
    db: Database, ledger: LedgerService
) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    async with db.transaction() as s:
        await ledger.place_hold(s, account_id=c.account_id, network_txn_id="n1", amount=100, currency="GBP")
    with pytest.raises(BankError) as err:
        async with db.transaction() as s:
            await ledger.place_hold(
                s, account_id=c.account_id, network_txn_id="n1", amount=200, currency="GBP"
            )
    assert err.value.code == "conflict.network_txn_id_reused"


async def test_release_gives_the_money_back_once(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    async with db.transaction() as s:
        await ledger.place_hold(s, account_id=c.account_id, network_txn_id="n1", amount=400, currency="GBP")
    for _ in range(2):
        async with db.transaction() as s:
            released = await ledger.release_hold(s, network_txn_id="n1")
        assert released.hold.status == "released"
        assert await account_state(db, c.account_id) == (1_000, 0)
    with pytest.raises(BankError) as err:
        async with db.transaction() as s:
            await ledger.capture_hold(s, network_txn_id="n1", amount=400)
    assert err.value.code == "conflict.hold_not_active"


async def test_forced_clearing_may_go_negative_and_refunds_credit(
    db: Database, ledger: LedgerService
) -> None:
    c = await create_customer(db, ledger, balance=500)
    async with db.transaction() as s:
        debit = await ledger.force_post(
            s, account_id=c.account_id, network_txn_id="offline-1", amount=800, currency="GBP", kind="debit"
        )
    assert debit.account.balance == -300
    async with db.transaction() as s:  # repeated: no second debit
        again = await ledger.force_post(
            s, account_id=c.account_id, network_txn_id="offline-1", amount=800, currency="GBP", kind="debit"
        )
    assert again.entry_id == debit.entry_id
    async with db.transaction() as s:
        await ledger.force_post(
            s, account_id=c.account_id, network_txn_id="refund-1", amount=300, currency="GBP", kind="credit"
        )
    assert await account_state(db, c.account_id) == (0, 0)
    assert (await events(db))[-2:] == ["account.posted", "account.posted"]
    assert await verify_ledger(db) == []


async def test_expired_holds_are_released(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=1_000)
    now = datetime.now(UTC)
    async with db.transaction() as s:
        await ledger.place_hold(
            s,
            account_id=c.account_id,
            network_txn_id="old",
            amount=300,
            currency="GBP",
            expires_at=now - timedelta(seconds=1),
        )
        await ledger.place_hold(
            s,
            account_id=c.account_id,
            network_txn_id="new",
            amount=200,
            currency="GBP",
            expires_at=now + timedelta(days=7),
        )
    assert await expire_due_holds(db, ledger) == 1
    assert await expire_due_holds(db, ledger) == 0
    assert await account_state(db, c.account_id) == (1_000, 200)
    assert (await events(db))[-1] == "account.hold.expired"


async def test_the_database_refuses_an_unbalanced_entry(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger)
    with pytest.raises(DBAPIError, match="does not balance"):
        async with db.transaction() as s:
            await s.execute(
                text(
                    "INSERT INTO accounts.journal_entries (id, kind, account_id, reference) "
                    "VALUES ('je_bad', 'manual', :a, 'bad')"
                ),
                {"a": c.account_id},
            )
            await s.execute(
                text("INSERT INTO accounts.postings (entry_id, account_id, amount, currency) VALUES "
                     "('je_bad', :a, 100, 'GBP'), ('je_bad', :f, -99, 'GBP')"),
                {"a": c.account_id, "f": TOPUP_FUNDING},
            )  # fmt: skip


async def test_postings_are_append_only(db: Database, ledger: LedgerService) -> None:
    await create_customer(db, ledger, balance=100)
    with pytest.raises(DBAPIError, match="append-only"):
        async with db.transaction() as s:
            await s.execute(text("UPDATE accounts.postings SET amount = amount * 2"))
    with pytest.raises(DBAPIError, match="append-only"):
        async with db.transaction() as s:
            await s.execute(text("DELETE FROM accounts.postings"))


async def test_verify_finds_a_tampered_balance(db: Database, ledger: LedgerService) -> None:
    c = await create_customer(db, ledger, balance=100)
    async with db.transaction() as s:
        await s.execute(
            text("UPDATE accounts.accounts SET balance = 1000000 WHERE id = :a"), {"a": c.account_id}
        )
    problems = await verify_ledger(db)
    assert len(problems) == 1 and c.account_id in problems[0]


async def test_one_network_id_on_two_accounts_at_once_is_a_conflict_not_a_crash(
    db: Database, ledger: LedgerService
) -> None:
    a = await create_customer(db, ledger, balance=100)
    b = await create_customer(db, ledger, balance=100)

    async def hold(account_id: str) -> str:  # as the api layer places it
        request = HoldRequest(account_id, "dup", 10, "GBP")
        (answer,) = await place_holds_at_edge(db, ledger, [HoldPlacement(request, None)], provisional=False)
        return answer.code if isinstance(answer, BankError) else "ok"

    for _ in range(5):
        outcomes = sorted(await asyncio.gather(hold(a.account_id), hold(b.account_id)))
        assert outcomes in (["conflict.network_txn_id_reused", "ok"], ["conflict.network_txn_id_reused"] * 2)
    assert await verify_ledger(db) == []


async def test_a_forced_posting_repeated_differently_is_a_conflict(
    db: Database, ledger: LedgerService
) -> None:
    a = await create_customer(db, ledger, balance=100)
    b = await create_customer(db, ledger, balance=100)
    async with db.transaction() as s:
        await ledger.force_post(
            s, account_id=a.account_id, network_txn_id="seq-1", amount=10, currency="GBP", kind="debit"
        )
    for account_id, amount in ((b.account_id, 10), (a.account_id, 99)):
        with pytest.raises(BankError) as err:
            async with db.transaction() as s:
                await ledger.force_post(
                    s,
                    account_id=account_id,
                    network_txn_id="seq-1",
                    amount=amount,
                    currency="GBP",
                    kind="debit",
                )
        assert err.value.code == "conflict.network_txn_id_reused"
    assert await account_state(db, b.account_id) == (100, 0)
    assert await account_state(db, a.account_id) == (90, 0)
