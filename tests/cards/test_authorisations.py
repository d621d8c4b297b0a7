"""0100 authorisations end to end: cards and accounts on their own sockets, one real database."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from tests.accounts.conftest import INTERNAL_TOKEN
from tests.cards.conftest import Bank, authorisation, merchant


async def declined_event(bank: Bank, nid: str) -> dict[str, Any]:
    [event] = [
        e
        for e in await bank.events("card.authorisation.declined")
        if e["data"]["network_transaction_id"] == nid
    ]
    return event


async def test_approval_places_a_hold_and_emits_an_event(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card, 1_915)
    answer = await bank.authorise(message)
    assert answer["mti"] == "0110" and answer["response_code"] == "00"
    assert answer["network_transaction_id"] == message["network_transaction_id"]
    assert len(answer["approval_code"]) == 6 and answer["authorisation_id"].startswith("auth_")
    hold = await bank.hold(message["network_transaction_id"])
    assert hold is not None and hold["status"] == "active" and hold["amount"] == 1_915
    assert await bank.money(ada) == (10_000, 1_915)
    [event] = await bank.events("card.authorisation.approved")
    assert event["subject"] == ada.account_id
    data = event["data"]
    assert data["account_id"] == ada.account_id and data["card_id"] == card["id"]
    assert data["amount"] == 1_915 and data["currency"] == "GBP" and data["held_amount"] == 1_915
    assert data["merchant"] == merchant() and data["authorisation_id"] == answer["authorisation_id"]
    assert data["network_transaction_id"] == message["network_transaction_id"]
    assert data["stan"] == message["stan"] and data["rrn"] == message["rrn"]
    assert "pan" not in data and card["pan"] not in str(event)


async def test_a_repeated_message_gets_the_same_answer_and_one_hold(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card, 2_500)
    first = await bank.authorise(message)
    again = await bank.authorise({**message, "mti": "0101", "transmission_time": "2026-11-26T08:15:09Z"})
    concurrent = await asyncio.gather(*(bank.authorise(message) for _ in range(5)))
    assert again == first and all(a == first for a in concurrent)
    assert await bank.money(ada) == (10_000, 2_500)
    assert len(await bank.rows("SELECT id FROM accounts.holds")) == 1
    assert len(await bank.events("card.authorisation.approved")) == 1


async def test_concurrent_duplicates_of_a_new_message_agree(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card, 700)
    answers = await asyncio.gather(*(bank.authorise(message) for _ in range(6)))
    assert all(a == answers[0] for a in answers) and answers[0]["response_code"] == "00"
    assert await bank.money(ada) == (10_000, 700)


async def test_another_message_under_a_used_id_is_a_duplicate_94(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card, 1_000)
    await bank.authorise(message)
    answer = await bank.authorise({**message, "amount": 9_000})
    assert answer == {
        "mti": "0110",
        "response_code": "94",
        "network_transaction_id": message["network_transaction_id"],
    }
    assert await bank.money(ada) == (10_000, 1_000)


async def test_unknown_card_is_14(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    other_pan = card["pan"][:-2] + ("00" if card["pan"][-2:] != "00" else "11")
    for pan in (other_pan, "5355220000000000"):
        answer = await bank.authorise(authorisation({**card, "pan": pan}))
        assert answer["response_code"] == "14" and "approval_code" not in answer
    assert await bank.money(ada) == (10_000, 0)
    assert await bank.events("card.authorisation.declined") == []  # no account to tell


async def test_insufficient_funds_is_51(bank: Bank) -> None:
    ada = await bank.customer(balance=1_000)
    card = await bank.issue(ada)
    message = authorisation(card, 1_001)
    assert (await bank.authorise(message))["response_code"] == "51"
    event = await declined_event(bank, message["network_transaction_id"])
    assert event["data"]["decline_reason"] == "INSUFFICIENT_FUNDS" and event["data"]["response_code"] == "51"
    assert await bank.money(ada) == (1_000, 0)


async def test_frozen_card_is_05_card_blocked_and_unfreezing_restores_it(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    await bank.http.post(f"/cards/{card['id']}/freeze", headers=bank.auth(ada))
    message = authorisation(card)
    assert (await bank.authorise(message))["response_code"] == "05"
    event = await declined_event(bank, message["network_transaction_id"])
    assert (
        event["data"]["decline_reason"] == "CARD_BLOCKED" and event["data"]["decline_detail"] == "card_frozen"
    )
    refund = await bank.authorise(authorisation(card, 500, processing_code="200000"))
    assert refund["response_code"] == "00"  # money back still reaches a frozen card
    await bank.http.post(f"/cards/{card['id']}/unfreeze", headers=bank.auth(ada))
    assert (await bank.authorise(authorisation(card)))["response_code"] == "00"


async def test_cancelled_card_is_14_card_inactive(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    await bank.http.post(f"/cards/{card['id']}/cancel", headers=bank.auth(ada))
    message = authorisation(card)
    assert (await bank.authorise(message))["response_code"] == "14"
    event = await declined_event(bank, message["network_transaction_id"])
    assert event["data"]["decline_reason"] == "CARD_INACTIVE"


async def test_wrong_cvc_is_05_invalid_cvc_and_no_cvc_is_fine(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    wrong = f"{(int(card['cvc']) + 1) % 1000:03d}"
    message = authorisation(card, cvc=wrong)
    assert (await bank.authorise(message))["response_code"] == "05"
    event = await declined_event(bank, message["network_transaction_id"])
    assert event["data"]["decline_reason"] == "INVALID_CVC"
    without = authorisation(card)
    del without["cvc"]
    assert (await bank.authorise(without))["response_code"] == "00"


async def test_expired_card_and_wrong_expiry_are_54(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    wrong = authorisation(card, expiry="2401")
    assert (await bank.authorise(wrong))["response_code"] == "54"
    assert (await declined_event(bank, wrong["network_transaction_id"]))["data"][
        "decline_detail"
    ] == "expiry_mismatch"
    async with bank.db.transaction() as session:
        await session.execute(
            text("UPDATE cards.cards SET expiry_month = 1, expiry_year = 2024 WHERE id = :id"),
            {"id": card["id"]},
        )
    expired = authorisation(card, expiry="2401")
    assert (await bank.authorise(expired))["response_code"] == "54"
    event = await declined_event(bank, expired["network_transaction_id"])
    assert (
        event["data"]["decline_reason"] == "CARD_INACTIVE"
        and event["data"]["decline_detail"] == "card_expired"
    )
    assert await bank.money(ada) == (10_000, 0)


async def test_blocked_categories_and_atm_switch_are_57(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    await bank.controls(ada, card, blocked_mccs="7995", atm_enabled="false")
    gambling = authorisation(card, merchant=merchant(mcc="7995", name="LUCKY BETS"))
    assert (await bank.authorise(gambling))["response_code"] == "57"
    assert (await declined_event(bank, gambling["network_transaction_id"]))["data"][
        "decline_detail"
    ] == "mcc_blocked"
    cash = authorisation(card, 2_000, processing_code="010000", merchant=merchant(mcc="6011", name="ATM"))
    assert (await bank.authorise(cash))["response_code"] == "57"
    assert (await bank.authorise(authorisation(card, currency="EUR")))["response_code"] == "57"
    await bank.controls(ada, card, atm_enabled="true")
    assert (await bank.authorise({**cash, "network_transaction_id": cash["network_transaction_id"] + "b"}))[
        "response_code"
    ] == "00"
    assert await bank.money(ada) == (10_000, 2_000)


async def test_spend_limits_are_61(bank: Bank) -> None:
    ada = await bank.customer(balance=100_000)
    card = await bank.issue(ada)
    await bank.controls(ada, card, spend_limit_per_transaction="5000", spend_limit_per_day="8000")
    assert (await bank.authorise(authorisation(card, 5_001)))["response_code"] == "61"
    assert (await bank.authorise(authorisation(card, 5_000)))["response_code"] == "00"
    assert (await bank.authorise(authorisation(card, 3_000)))["response_code"] == "00"
    over = authorisation(card, 1)
    assert (await bank.authorise(over))["response_code"] == "61"  # 8,000 spent today
    assert (await declined_event(bank, over["network_transaction_id"]))["data"][
        "decline_detail"
    ] == "daily_limit"
    reversed_one = authorisation(card, 2_000)
    assert (await bank.authorise(reversed_one))["response_code"] == "61"
    assert await bank.money(ada) == (100_000, 8_000)


async def test_concurrent_authorisations_on_one_account_never_overspend(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    cards = [await bank.issue(ada) for _ in range(6)]
    messages = [authorisation(cards[i % len(cards)], 1_000) for i in range(30)]
    answers = await asyncio.gather(*(bank.authorise(m) for m in messages))
    codes = sorted(a["response_code"] for a in answers)
    assert codes == ["00"] * 10 + ["51"] * 20
    assert await bank.money(ada) == (10_000, 10_000)
    approved = {
        m["network_transaction_id"]
        for m, a in zip(messages, answers, strict=True)
        if a["response_code"] == "00"
    }
    active = await bank.rows("SELECT network_txn_id FROM accounts.holds WHERE status = 'active'")
    assert {r["network_txn_id"] for r in active} == approved


async def test_balance_inquiry_and_refund_authorisation_hold_nothing(bank: Bank) -> None:
    ada = await bank.customer(balance=4_200)
    card = await bank.issue(ada)
    inquiry = await bank.authorise(
        authorisation(card, 0, processing_code="310000", merchant=merchant(mcc="6011"))
    )
    assert (
        inquiry["response_code"] == "00"
        and inquiry["available_balance"] == 4_200
        and inquiry["currency"] == "GBP"
    )
    refund = await bank.authorise(authorisation(card, 1_000, processing_code="200000"))
    assert refund["response_code"] == "00"
    unsupported = await bank.authorise(authorisation(card, 1_000, processing_code="400000"))
    assert unsupported["response_code"] == "57"
    assert await bank.money(ada) == (4_200, 0)


async def test_the_network_credential_is_required(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    message = authorisation(card)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-internal-token": "wrong"}, bank.auth(ada)):
        r = await bank.http.post("/network/authorisations", json=message, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized.network", headers
    r = await bank.http.post(
        "/network/authorisations", content=b"{not json", headers={"Authorization": "Basic x"}
    )
    assert r.status_code == 401  # the credential is checked before the body is read
    assert await bank.money(ada) == (10_000, 0)
    # What the gateway sends after checking the network's key itself:
    r = await bank.http.post(
        "/network/authorisations", json=message, headers={"x-internal-token": INTERNAL_TOKEN}
    )
    assert r.status_code == 200 and r.json()["response_code"] == "00"


async def test_malformed_messages_are_typed_400s_and_never_approved(bank: Bank) -> None:
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    good = authorisation(card)
    cases: list[tuple[Any, str, str]] = [
        ({**good, "mti": "0200"}, "bad_request.bad_param", "mti"),
        ({**good, "pan": card["pan"][:6] + "abcdefghij"}, "bad_request.bad_param", "pan"),
        ({**good, "amount": "1915"}, "bad_request.bad_param", "amount"),
        ({**good, "amount": 19.15}, "bad_request.bad_param", "amount"),
        ({**good, "amount": -5}, "bad_request.bad_param", "amount"),
        ({**good, "amount": 0}, "bad_request.bad_param", "message"),
        ({**good, "expiry": "2913"}, "bad_request.bad_param", "expiry"),
        ({**good, "cvc": "12"}, "bad_request.bad_param", "cvc"),
        ({**good, "currency": "gbp"}, "bad_request.bad_param", "currency"),
        ({**good, "stan": "42"}, "bad_request.bad_param", "stan"),
        ({**good, "transmission_time": "2026-11-26T08:15:00"}, "bad_request.bad_param", "transmission_time"),
        ({**good, "network_transaction_id": "../x"}, "bad_request.bad_param", "network_transaction_id"),
        ({**good, "merchant": {**merchant(), "mcc": "58"}}, "bad_request.bad_param", "merchant.mcc"),
        (
            {**good, "merchant": {**merchant(), "name": "NUL\u0000BYTE"}},
            "bad_request.bad_param",
            "merchant.name",
        ),
        ({k: v for k, v in good.items() if k != "merchant"}, "bad_request.missing_param", "merchant"),
        ([good], "bad_request.bad_param", "message"),
    ]
    for body, code, param in cases:
        r = await bank.network("authorisations", body)
        assert r.status_code == 400, (param, r.text)
        assert (r.json()["code"], r.json()["params"]["param"]) == (code, param), r.text
        assert card["pan"] not in r.text
    r = await bank.http.post("/network/authorisations", content=b'{"mti": "01', headers=bank.network_headers)
    assert r.status_code == 400 and r.json()["code"] == "bad_request.malformed_message"
    assert await bank.money(ada) == (10_000, 0)
    assert await bank.rows("SELECT id FROM cards.authorisations") == []
