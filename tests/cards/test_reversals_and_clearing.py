"""Reversals, advices and clearing end to end: what accounts ends up holding and posting."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from services.accounts.verify import verify_ledger
from services.cards import repository
from shared.config import BankSettings
from shared.db import Database
from tests.accounts.conftest import Customer
from tests.cards.conftest import Bank, authorisation, merchant, presentment, reversal, running_bank


async def approved(
    bank: Bank, customer: Customer, card: dict[str, Any], amount: int, **kw: Any
) -> dict[str, Any]:
    message = authorisation(card, amount, **kw)
    assert (await bank.authorise(message))["response_code"] == "00"
    return message


async def settled_event(bank: Bank, presentment_id: str) -> dict[str, Any]:
    events = await bank.events()
    [event] = [e for e in events if e["data"].get("presentment_id") == presentment_id]
    return event


async def test_full_reversal_releases_the_hold_once(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = await approved(bank, ada, card, 3_000)
    answer = await bank.reverse(reversal(message))
    assert answer["mti"] == "0410" and answer["response_code"] == "00"
    assert (
        answer["network_transaction_id"] == message["network_transaction_id"] and answer["authorisation_id"]
    )
    assert await bank.money(ada) == (10_000, 0)
    assert (await bank.hold(message["network_transaction_id"]) or {})["status"] == "released"
    assert await bank.reverse(reversal(message)) == answer  # a repeat: same answer, nothing more
    [event] = await bank.events("card.authorisation.reversed")
    assert event["data"]["reversed_amount"] == 3_000 and event["data"]["remaining_amount"] == 0
    assert event["subject"] == ada.account_id
    # Cleared anyway later (the merchant's mistake): force-posted, not captured from a dead hold.
    result = await bank.present(presentment(card, 3_000, message["network_transaction_id"]))
    assert result["outcome"] == "force_posted"
    assert await bank.money(ada) == (7_000, 0)


async def test_partial_reversal_holds_only_the_remainder_and_clearing_captures_it(bank: Bank) -> None:
    ada = await bank.customer(balance=20_000)
    card = await bank.issue(ada)
    message = await approved(bank, ada, card, 10_000, merchant=merchant(mcc="5541", name="FUEL"))
    answer = await bank.reverse(reversal(message, replacement_amount=6_500))
    assert answer["response_code"] == "00"
    assert await bank.money(ada) == (20_000, 6_500)
    nid = message["network_transaction_id"]
    assert (await bank.hold(nid) or {})["status"] == "released"
    assert (await bank.hold(f"{nid}:r6500") or {})["status"] == "active"
    [event] = await bank.events("card.authorisation.reversed")
    assert event["data"]["reversed_amount"] == 3_500 and event["data"]["remaining_amount"] == 6_500
    assert await bank.reverse(reversal(message, replacement_amount=6_500)) == answer
    assert await bank.money(ada) == (20_000, 6_500)

    result = await bank.present(presentment(card, 6_500, nid))
    assert (result["status"], result["outcome"]) == ("settled", "captured")
    assert await bank.money(ada) == (13_500, 0)
    # The tolerance now applies to what is still authorised: 6,500 + 15% = 7,475 at most.
    assert await verify_ledger(bank.db) == []


async def test_presentment_equal_and_lower_capture_the_hold(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    equal = await approved(bank, ada, card, 2_000)
    lower = await approved(bank, ada, card, 3_000)
    assert await bank.money(ada) == (10_000, 5_000)
    first = presentment(card, 2_000, equal["network_transaction_id"])
    result = await bank.present(first)
    assert (result["status"], result["outcome"], result["exceeds_tolerance"]) == (
        "settled",
        "captured",
        False,
    )
    assert await bank.money(ada) == (8_000, 3_000)
    result = await bank.present(presentment(card, 2_400, lower["network_transaction_id"]))
    assert result["outcome"] == "captured"
    assert await bank.money(ada) == (5_600, 0)  # the unused 600 of the hold is free again
    assert await bank.present(first) == (await bank.present(first))  # idempotent per presentment id
    assert await bank.money(ada) == (5_600, 0)
    event = await settled_event(bank, first["presentment_id"])
    assert event["type"] == "card.transaction.settled"
    data = event["data"]
    assert data["amount"] == 2_000 and data["authorised_amount"] == 2_000 and data["forced"] is False
    assert data["card_id"] == card["id"] and data["merchant"]["name"] == "BRIGHTBIRD ESPRESSO"
    assert await verify_ledger(bank.db) == []


async def test_presentment_above_the_authorisation_within_and_beyond_tolerance(bank: Bank) -> None:
    ada = await bank.customer(balance=100_000)
    card = await bank.issue(ada)
    cafe = await approved(bank, ada, card, 10_000)  # MCC 5814: 20%
    shop = await approved(bank, ada, card, 10_000, merchant=merchant(mcc="5411", name="GROCER"))  # 15%
    beyond = await approved(bank, ada, card, 10_000, merchant=merchant(mcc="5411", name="GROCER"))

    result = await bank.present(presentment(card, 12_000, cafe["network_transaction_id"]))
    assert (result["outcome"], result["exceeds_tolerance"]) == ("captured", False)
    result = await bank.present(
        presentment(
            card, 11_500, shop["network_transaction_id"], merchant=merchant(mcc="5411", name="GROCER")
        )
    )
    assert (result["outcome"], result["exceeds_tolerance"]) == ("captured", False)
    assert await bank.money(ada) == (100_000 - 23_500, 10_000)

    over = presentment(
        card, 11_501, beyond["network_transaction_id"], merchant=merchant(mcc="5411", name="GROCER")
    )
    result = await bank.present(over)
    # The scheme has taken the money: the customer is charged all of it, flagged for a chargeback.
    assert (result["status"], result["outcome"], result["exceeds_tolerance"]) == ("settled", "captured", True)
    assert await bank.money(ada) == (100_000 - 23_500 - 11_501, 0)
    event = await settled_event(bank, over["presentment_id"])
    assert event["data"]["exceeds_tolerance"] is True and event["data"]["authorised_amount"] == 10_000
    assert await bank.present(over) == result
    assert await bank.money(ada) == (100_000 - 23_500 - 11_501, 0)
    assert await verify_ledger(bank.db) == []


async def test_offline_presentment_is_force_posted_even_beyond_the_balance(bank: Bank) -> None:
    ada = await bank.customer(balance=1_000)
    card = await bank.issue(ada)
    offline = presentment(card, 1_500, None)
    result = await bank.present(offline)
    assert (result["status"], result["outcome"], result["authorisation_id"]) == (
        "settled",
        "force_posted",
        None,
    )
    assert await bank.money(ada) == (-500, 0)
    unmatched = presentment(card, 100, "NEVER-AUTHORISED")
    assert (await bank.present(unmatched))["outcome"] == "force_posted"
    event = await settled_event(bank, offline["presentment_id"])
    assert event["data"]["forced"] is True and event["data"]["authorised_amount"] is None
    assert await bank.money(ada) == (-600, 0)


async def test_refund_presentment_credits_the_account(bank: Bank) -> None:
    ada = await bank.customer(balance=1_000)
    card = await bank.issue(ada)
    refund = presentment(card, 750, None, processing_code="200000")
    result = await bank.present(refund)
    assert (result["status"], result["outcome"]) == ("settled", "refunded")
    assert await bank.present(refund) == result
    assert await bank.money(ada) == (1_750, 0)
    event = await settled_event(bank, refund["presentment_id"])
    assert event["type"] == "card.refund.settled" and event["data"]["amount"] == 750


async def test_a_batch_settles_each_presentment_and_rejects_what_it_cannot(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = await approved(bank, ada, card, 1_000)
    stranger = {**card, "pan": "5355220000000000"}
    batch = [
        presentment(card, 1_000, message["network_transaction_id"]),
        presentment(card, 200, None, processing_code="200000"),
        presentment(stranger, 300, None),
        presentment(card, 300, None, currency="EUR"),
    ]
    r = await bank.network("clearing", {"presentments": batch})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mti"] == "1250"
    outcomes = [(x["status"], x["outcome"]) for x in body["results"]]
    assert outcomes == [
        ("settled", "captured"),
        ("settled", "refunded"),
        ("rejected", "unknown_card"),
        ("rejected", "currency_not_supported"),
    ]
    assert await bank.money(ada) == (9_200, 0)
    again = await bank.network("clearing", {"presentments": batch})
    assert again.json() == body
    bad = await bank.network("clearing", {"presentments": [{**batch[0], "amount": 0}]})
    assert bad.status_code == 400 and bad.json()["params"]["param"] == "presentments.0"


async def test_an_advice_is_recorded_and_force_posted_once(bank: Bank) -> None:
    ada = await bank.customer(balance=500)
    card = await bank.issue(ada)
    advice = {**authorisation(card, 1_200), "mti": "0120", "response_code": "00"}
    r = await bank.network("advices", advice)
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["mti"] == "0130" and ack["response_code"] == "00" and ack["authorisation_id"]
    assert await bank.money(ada) == (-700, 0)  # the network approved it; we pay it
    again = await bank.network("advices", advice)
    assert again.json() == ack and await bank.money(ada) == (-700, 0)
    [event] = await bank.events("card.authorisation.approved")
    assert event["data"]["stand_in"] is True and event["data"]["held_amount"] == 0
    # A repeat of the 0100 it stood in for gets the stand-in's answer, and holds nothing.
    assert (await bank.authorise({**advice, "mti": "0100"}))["response_code"] == "00"
    # Clearing for a different final amount posts the difference only.
    result = await bank.present(presentment(card, 1_000, advice["network_transaction_id"]))
    assert result["outcome"] == "adjusted"
    assert await bank.money(ada) == (-500, 0)
    assert await verify_ledger(bank.db) == []


async def test_an_advice_for_a_transaction_we_approved_posts_nothing(bank: Bank) -> None:
    ada = await bank.customer(balance=5_000)
    card = await bank.issue(ada)
    message = await approved(bank, ada, card, 1_000)
    r = await bank.network("advices", {**message, "mti": "0120", "response_code": "00"})
    assert r.json()["response_code"] == "00"
    assert await bank.money(ada) == (5_000, 1_000)
    result = await bank.present(presentment(card, 1_000, message["network_transaction_id"]))
    assert result["outcome"] == "captured"
    assert await bank.money(ada) == (4_000, 0)


async def test_reversal_of_an_unknown_or_settled_transaction(bank: Bank) -> None:
    ada = await bank.customer(balance=5_000)
    card = await bank.issue(ada)
    unknown = authorisation(card, 100)
    answer = await bank.reverse(reversal(unknown))
    assert answer["response_code"] == "00" and "authorisation_id" not in answer
    message = await approved(bank, ada, card, 1_000)
    await bank.present(presentment(card, 1_000, message["network_transaction_id"]))
    assert (await bank.reverse(reversal(message)))["response_code"] == "57"
    assert await bank.money(ada) == (4_000, 0)


async def test_a_partial_reversal_that_dies_after_its_new_hold_leaves_no_hold_blocking_money(
    db: Database, settings: BankSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cards places the remainder's hold, then dies before its own commit; the network clears before
    it repeats the reversal. Nothing in cards points at the new hold, so the safety net recorded
    before asking for it releases it: the customer's money is not blocked until the hold expires."""
    async with running_bank(db, settings, rehold_in_doubt_seconds=0.5) as bank:
        ada = await bank.customer(balance=20_000)
        card = await bank.issue(ada)
        message = await approved(bank, ada, card, 10_000)
        nid = message["network_transaction_id"]
        real_get_card = repository.get_card

        async def dies_once(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(repository, "get_card", real_get_card)
            raise RuntimeError("cards died before committing the reversal")

        monkeypatch.setattr(repository, "get_card", dies_once)
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            await bank.reverse(reversal(message, replacement_amount=6_500))
        assert (await bank.hold(f"{nid}:r6500") or {})["status"] == "active"  # asked for, not recorded

        result = await bank.present(presentment(card, 6_500, nid))  # before any repeat of the reversal
        assert result["status"] == "settled"
        deadline = asyncio.get_running_loop().time() + 120
        while (await bank.hold(f"{nid}:r6500") or {}).get("status") == "active":
            assert asyncio.get_running_loop().time() < deadline, "the in-doubt hold was never released"
            await asyncio.sleep(0.1)
        assert await bank.money(ada) == (13_500, 0)
        assert await verify_ledger(bank.db) == []
