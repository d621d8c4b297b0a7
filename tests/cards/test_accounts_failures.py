"""accounts down or late: the authorisation answers 91 within its deadline and no hold is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from sqlalchemy import text

from shared.config import BankSettings
from shared.db import Database
from tests.cards.conftest import Bank, authorisation, presentment, reversal, running_bank
from tests.support.waiting import eventually


async def compensation_done(bank: Bank, hold_id: str) -> bool:
    rows = await bank.rows("SELECT status FROM cards.compensations WHERE hold_id = :id", id=hold_id)
    return bool(rows) and rows[0]["status"] == "done"


async def test_accounts_down_answers_91_and_leaves_no_hold_after_recovery(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    await bank.accounts.stop()
    message = authorisation(card, 2_000)
    started = time.monotonic()
    answer = await bank.authorise(message)
    assert answer["response_code"] == "91" and "approval_code" not in answer
    assert time.monotonic() - started < 3.0
    assert await bank.authorise(message) == answer  # a repeat: the same answer
    [event] = await bank.events("card.authorisation.declined")
    assert (
        event["data"]["decline_reason"] == "OTHER" and event["data"]["decline_detail"] == "issuer_unavailable"
    )

    await bank.accounts.start()
    await bank.resolve_holds()
    assert await bank.hold(message["network_transaction_id"]) is None
    assert await bank.money(ada) == (10_000, 0)
    await asyncio.sleep(0.3)  # past the breaker's reset time: authorisations flow again
    assert (await bank.authorise(authorisation(card, 2_000)))["response_code"] == "00"


async def test_accounts_late_answers_91_and_the_late_hold_is_released(
    db: Database, settings: BankSettings
) -> None:
    async with running_bank(db, settings, accounts_deadline_ms=150) as bank:
        ada = await bank.customer(balance=10_000)
        card = await bank.issue(ada)
        message = authorisation(card, 2_500)
        nid = message["network_transaction_id"]
        async with db.transaction() as session:  # accounts' hold request queues behind this row lock
            await session.execute(
                text("SELECT 1 FROM accounts.accounts WHERE id = :id FOR UPDATE"), {"id": ada.account_id}
            )
            # Answered while accounts cannot answer (it waits for this lock): cards did not hang.
            answer = await bank.authorise(message)
            assert answer["response_code"] == "91"
        # The lock is gone: the request we gave up on now places its hold, provisionally...
        await eventually(lambda: _hold_status_is(bank, nid, "active"))
        assert await bank.money(ada) == (10_000, 2_500)
        # ...and the resolution releases it: the authorisation recorded behind it is a decline.
        assert await bank.resolve_holds() == 1
        assert (await bank.hold(nid) or {})["status"] == "released"
        assert await bank.money(ada) == (10_000, 0)
        assert await bank.resolve_holds() == 0  # resolved for good


async def _hold_status_is(bank: Bank, nid: str, status: str) -> bool:
    return (await bank.hold(nid) or {}).get("status") == status


async def test_a_reversal_while_accounts_is_down_is_accepted_and_applied_later(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card, 4_000)
    assert (await bank.authorise(message))["response_code"] == "00"
    await bank.accounts.stop()
    assert (await bank.reverse(reversal(message)))["response_code"] == "00"
    await bank.accounts.start()
    await eventually(lambda: compensation_done(bank, message["network_transaction_id"]))
    assert (await bank.hold(message["network_transaction_id"]) or {})["status"] == "released"


async def test_partial_reversal_and_clearing_ask_to_be_sent_again_while_accounts_is_down(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card, 4_000)
    assert (await bank.authorise(message))["response_code"] == "00"
    await bank.accounts.stop()
    assert (await bank.reverse(reversal(message, replacement_amount=3_000)))["response_code"] == "91"
    clearing = presentment(card, 3_000, message["network_transaction_id"])
    result = await bank.present(clearing)
    assert (result["status"], result["outcome"]) == ("retry", "issuer_unavailable")
    await bank.accounts.start()
    await asyncio.sleep(0.3)  # past the circuit breaker's reset time (0.2 s in tests)

    assert (await bank.reverse(reversal(message, replacement_amount=3_000)))["response_code"] == "00"
    assert await bank.money(ada) == (10_000, 3_000)
    result = await bank.present(clearing)
    assert (result["status"], result["outcome"]) == ("settled", "captured")
    assert await bank.money(ada) == (7_000, 0)


@contextlib.asynccontextmanager
async def account_locked(db: Database, account_id: str) -> AsyncIterator[None]:
    """The account's row locked in a transaction of its own: accounts waits for it to place a hold."""
    async with db.transaction() as session:
        await session.execute(
            text("SELECT 1 FROM accounts.accounts WHERE id = :id FOR UPDATE"), {"id": account_id}
        )
        yield


async def test_authorisations_that_wait_too_long_for_a_batch_are_not_answered(
    db: Database, settings: BankSettings
) -> None:
    overrides = {"authorisation_queue_seconds": 0.2, "accounts_deadline_ms": 5_000}
    async with running_bank(db, settings, **overrides) as bank:
        ada = await bank.customer(balance=10_000)
        card = await bank.issue(ada)
        first, second = authorisation(card, 1_000), authorisation(card, 2_000)
        async with account_locked(db, ada.account_id):  # the first one's batch waits behind this lock
            slow = asyncio.create_task(bank.authorise(first))
            await asyncio.sleep(0.3)
            late = asyncio.create_task(bank.network("authorisations", second))
            await asyncio.sleep(0.3)  # the second waits for the next batch, past its 0.2 s
        assert (await slow)["response_code"] == "00"
        r = await late
        assert r.status_code == 429 and r.json()["code"] == "rate_limited.queue_timeout"
        assert r.headers["retry-after"] == "1"
        assert await bank.rows("SELECT 1 FROM cards.authorisations WHERE network_transaction_id = :n",
                               n=second["network_transaction_id"]) == []  # fmt: skip
        assert (await bank.authorise(second))["response_code"] == "00"  # sent again: decided afresh
        assert await bank.money(ada) == (10_000, 3_000)


async def test_a_repeat_that_arrives_while_its_original_is_decided_gets_the_original_s_answer(
    db: Database, settings: BankSettings
) -> None:
    # The original's batch waits behind a lock in accounts, longer than any message may wait for a
    # batch: the repeats must wait for its answer, not be refused or decided again.
    overrides = {"authorisation_queue_seconds": 0.2, "accounts_deadline_ms": 5_000}
    async with running_bank(db, settings, **overrides) as bank:
        ada = await bank.customer(balance=10_000)
        card = await bank.issue(ada)
        original = authorisation(card, 1_000)
        clash = {**original, "amount": 1_100}  # another message under the same network id
        async with account_locked(db, ada.account_id):
            first = asyncio.create_task(bank.authorise(original))
            await asyncio.sleep(0.3)
            repeats = [asyncio.create_task(bank.network("authorisations", original)) for _ in range(3)]
            clashing = asyncio.create_task(bank.network("authorisations", clash))
            await asyncio.sleep(0.4)  # past the 0.2 s any of them may wait for a batch
        answer = await first
        assert answer["response_code"] == "00"
        for repeat in repeats:
            r = await repeat
            assert r.status_code == 200 and r.json() == answer, r.text
        r = await clashing
        assert r.status_code == 200 and r.json()["response_code"] == "94", r.text
        assert len(await bank.rows("SELECT 1 FROM cards.authorisations WHERE network_transaction_id = :n",
                                   n=original["network_transaction_id"])) == 1  # fmt: skip
        assert await bank.money(ada) == (10_000, 1_000)
