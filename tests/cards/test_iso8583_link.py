"""The ISO 8583 link end to end: cards' real listener, the real authorisation service, accounts and one
database; the network's side encodes and decodes with pyiso8583 (tests/cards/test_iso8583_support.py).

Every message type and every response code, sign-on, echo and sign-off, out-of-order answers,
repeats and reversals; and, message for message, the same answers and the same events as the JSON
routes give.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.cards.observability import BATCH_SIZE
from simulator.iso8583 import Link, LinkDown
from tests.cards.conftest import NETWORK_KEY, Bank, authorisation, network_id, reversal
from tests.cards.test_iso8583_support import (
    LinkBank,
    assert_echoes,
    exchange,
    iso,
    lbank,
    plain_merchant,
)

__all__ = ["lbank"]

# Event fields that differ between two otherwise identical messages: our id, the network's id and a
# random approval code.
OWN_IDS = ("authorisation_id", "network_transaction_id", "approval_code")


def other_pan(card: dict[str, Any]) -> dict[str, Any]:
    pan = card["pan"]
    return {**card, "pan": pan[:-1] + str((int(pan[-1]) + 1) % 10)}


async def events_of(bank: Bank, nid: str) -> list[dict[str, Any]]:
    found = []
    for e in await bank.events():
        if e["data"].get("network_transaction_id") == nid:
            data = {k: v for k, v in e["data"].items() if k not in OWN_IDS}
            found.append({"type": e["type"], "subject": e["subject"], "data": data})
    return found


async def test_sign_on_echo_sign_off_and_no_decision_before_sign_on(lbank: LinkBank) -> None:
    bank = lbank.bank
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    link = await lbank.link(sign_on=False)
    echo = await link.network_management("301")
    assert (echo["t"], echo["39"], echo["70"]) == ("0810", "00", "301")

    body = authorisation(card, 500, merchant=plain_merchant())
    early = await exchange(link, iso(body))
    assert (early["t"], early["39"]) == ("0110", "91") and "38" not in early
    assert_echoes(iso(body), early)
    assert await bank.rows("SELECT 1 FROM cards.authorisations") == []  # not decided, not recorded
    assert await bank.money(ada) == (10_000, 0)

    signed_on = await link.network_management("001", key=NETWORK_KEY)
    assert (signed_on["t"], signed_on["39"], signed_on["70"]) == ("0810", "00", "001")
    approved = await exchange(link, iso(body))  # decided afresh: the 91 above recorded nothing
    assert approved["39"] == "00" and len(approved["38"]) == 6
    assert await bank.money(ada) == (10_000, 500)

    signed_off = await link.network_management("002")
    assert (signed_off["39"], signed_off["70"]) == ("00", "002")
    later = await exchange(link, iso(authorisation(card, 700, merchant=plain_merchant())))
    assert later["39"] == "91"
    assert len(await bank.rows("SELECT 1 FROM cards.authorisations")) == 1
    assert (await link.network_management("001", key=NETWORK_KEY))["39"] == "00"
    assert (await exchange(link, iso(authorisation(card, 700, merchant=plain_merchant()))))["39"] == "00"
    await link.close()


async def test_a_sign_on_without_the_key_is_refused_and_the_link_closed(lbank: LinkBank) -> None:
    wrong = Link("127.0.0.1", lbank.port, "not-the-key")
    with pytest.raises(LinkDown, match="63"):
        await wrong.open()
    keyless = await lbank.link(sign_on=False)
    answer = await keyless.network_management("001")
    assert answer["39"] == "63"
    assert await keyless.wait_closed(5)
    assert len(lbank.server.links) == 0


async def test_every_response_code_is_the_json_routes_and_so_are_the_events(lbank: LinkBank) -> None:
    """One message over JSON and the same message (its own network id) over the link, for every
    response code the decision can give: the same code, and events equal but for the ids."""
    bank = lbank.bank
    link = await lbank.link()
    cases: list[tuple[str, str, str]] = []  # (expected code, JSON network id, link network id)

    async def both(expected: str, card: dict[str, Any], amount: int, **overrides: Any) -> dict[str, str]:
        overrides.setdefault("merchant", plain_merchant())
        by_json = authorisation(card, amount, **overrides)
        by_link = {**by_json, "network_transaction_id": network_id()}  # the same message, its own id
        answer = await bank.authorise(by_json)
        iso_answer = await exchange(link, iso(by_link))
        assert (answer["response_code"], iso_answer["39"]) == (expected, expected), overrides
        assert iso_answer["t"] == "0110"
        assert_echoes(iso(by_link), iso_answer)
        assert ("38" in iso_answer) == (expected == "00") == ("approval_code" in answer)
        cases.append((expected, by_json["network_transaction_id"], by_link["network_transaction_id"]))
        return iso_answer

    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    await bank.controls(ada, card, spend_limit_per_transaction="5000", blocked_mccs="7995")
    await both("00", card, 1_000)
    await both("05", card, 1_000, cvc=f"{(int(card['cvc']) + 1) % 1000:03d}")  # CVC2 in DE 48 tag 92
    await both("14", other_pan(card), 1_000)
    await both("54", card, 1_000, expiry="3001")
    await both("57", card, 1_000, merchant=plain_merchant(mcc="7995"))
    await both("57", card, 1_000, currency="EUR")  # DE 49 978
    await both("61", card, 6_000)
    poor = await bank.issue(await bank.customer(balance=2_000))
    await both("51", poor, 2_500)
    frozen = await bank.issue(customer := await bank.customer(balance=5_000))
    await bank.http.post(f"/cards/{frozen['id']}/freeze", headers=bank.auth(customer))
    await both("05", frozen, 100)

    # 94: another message under a network id already used (here: each wire's own approval above).
    approved_json, approved_link = cases[0][1], cases[0][2]
    dup_json = await bank.authorise(authorisation(card, 1_234, network_transaction_id=approved_json))
    dup_link = await exchange(link, iso(authorisation(card, 1_234, network_transaction_id=approved_link,
                                                      merchant=plain_merchant())))  # fmt: skip
    assert dup_json["response_code"] == dup_link["39"] == "94"

    # 91: accounts does not answer.
    await bank.accounts.stop()
    try:
        await both("91", card, 300)
    finally:
        await bank.accounts.start()

    assert {code for code, _, _ in cases} == {"00", "05", "14", "51", "54", "57", "61", "91"}
    for code, by_json, by_link in cases:
        json_events, link_events = await events_of(bank, by_json), await events_of(bank, by_link)
        assert json_events == link_events, code
        if code != "14":  # an unknown card has no account to tell
            assert len(link_events) == 1, code
    await link.close()


async def test_a_repeat_gets_the_recorded_answer_whichever_wire_it_comes_by(lbank: LinkBank) -> None:
    bank = lbank.bank
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    link = await lbank.link()

    first = authorisation(card, 1_500, merchant=plain_merchant())
    by_json = await bank.authorise(first)
    repeat = await exchange(link, iso(first, "0101"))
    assert repeat["t"] == "0110" and repeat["39"] == "00" and repeat["38"] == by_json["approval_code"]

    second = authorisation(card, 2_500, merchant=plain_merchant())
    by_link = await exchange(link, iso(second))
    again = await exchange(link, iso(second, "0101"))
    json_repeat = await bank.authorise({**second, "mti": "0101"})
    assert by_link["39"] == again["39"] == json_repeat["response_code"] == "00"
    assert by_link["38"] == again["38"] == json_repeat["approval_code"]

    assert await bank.money(ada) == (10_000, 4_000)  # one hold each
    assert len(await bank.events("card.authorisation.approved")) == 2
    await link.close()


async def test_advices_and_their_repeats(lbank: LinkBank) -> None:
    bank = lbank.bank
    ada = await bank.customer(balance=10_000)
    card = await bank.issue(ada)
    link = await lbank.link()
    by_json = {**authorisation(card, 300, merchant=plain_merchant()), "mti": "0120", "response_code": "00"}
    by_link = {**by_json, "network_transaction_id": network_id()}
    json_answer = (await bank.network("advices", by_json)).json()
    link_answer = await exchange(link, iso(by_link))
    assert json_answer["response_code"] == link_answer["39"] == "00" and link_answer["t"] == "0130"
    assert_echoes(iso(by_link), link_answer)
    assert (await exchange(link, iso(by_link, "0121")))["39"] == "00"
    assert await bank.money(ada) == (10_000 - 600, 0)  # each force-posted once
    json_events = await events_of(bank, by_json["network_transaction_id"])
    assert json_events == await events_of(bank, by_link["network_transaction_id"])
    assert [e["data"]["stand_in"] for e in json_events] == [True]
    await link.close()


async def test_full_and_partial_reversals(lbank: LinkBank) -> None:
    bank = lbank.bank
    ada = await bank.customer(balance=50_000)
    card = await bank.issue(ada)
    link = await lbank.link()
    full = authorisation(card, 4_000, merchant=plain_merchant())
    partial = authorisation(card, 10_000, merchant=plain_merchant())
    by_json = {**partial, "network_transaction_id": network_id()}
    for message in (full, partial):
        assert (await exchange(link, iso(message)))["39"] == "00"
    assert (await bank.authorise(by_json))["response_code"] == "00"
    assert await bank.money(ada) == (50_000, 24_000)

    undo = iso(reversal(full))
    answer = await exchange(link, undo)
    assert (answer["t"], answer["39"]) == ("0410", "00") and answer["90"] == undo["90"]
    assert (await bank.hold(full["network_transaction_id"]) or {}).get("status") == "released"

    cut = iso(reversal(partial, replacement_amount=6_000))
    assert "95" in cut and cut["95"].startswith("000000006000")
    answer = await exchange(link, cut)
    assert answer["39"] == "00" and answer["95"] == cut["95"]
    assert (await exchange(link, iso(reversal(partial, replacement_amount=6_000), "0401")))["39"] == "00"
    json_answer = await bank.reverse(reversal(by_json, replacement_amount=6_000))
    assert json_answer["response_code"] == "00"
    assert await bank.money(ada) == (50_000, 12_000)
    reversed_json = [e for e in await events_of(bank, by_json["network_transaction_id"])
                     if e["type"] == "card.authorisation.reversed"]  # fmt: skip
    reversed_link = [e for e in await events_of(bank, partial["network_transaction_id"])
                     if e["type"] == "card.authorisation.reversed"]  # fmt: skip
    assert reversed_json == reversed_link and len(reversed_link) == 1
    await link.close()


async def test_a_balance_inquiry_answers_de_54(lbank: LinkBank) -> None:
    bank = lbank.bank
    ada = await bank.customer(balance=12_345)
    card = await bank.issue(ada)
    link = await lbank.link()
    answer = await exchange(
        link, iso(authorisation(card, 0, processing_code="310000", merchant=plain_merchant(mcc="6011")))
    )
    assert answer["39"] == "00" and answer["54"] == "0002826C000000012345"
    await link.close()


async def test_answers_go_out_as_they_complete_and_readable_messages_share_a_batch(lbank: LinkBank) -> None:
    bank = lbank.bank
    cards = [await bank.issue(await bank.customer(balance=100_000)) for _ in range(10)]
    links = [await lbank.link() for _ in range(2)]

    # An echo sent after an 0100 on the same link is answered first: it waits for nothing.
    order: list[str] = []

    async def timed(name: str, call: Any) -> None:
        await call
        order.append(name)

    slow = exchange(links[0], iso(authorisation(cards[0], 100, merchant=plain_merchant())))
    await asyncio.gather(timed("0100", slow), timed("0800", links[0].network_management("301")))
    assert order == ["0800", "0100"]

    # 200 messages in flight on two links: every answer matched to its request by STAN, DE 7 and DE 63,
    # and far fewer batches than messages.
    count_before, _ = _histogram(BATCH_SIZE)
    messages = [authorisation(cards[i % 10], 100 + i, merchant=plain_merchant()) for i in range(200)]
    answers = await asyncio.gather(*(exchange(links[i % 2], iso(m)) for i, m in enumerate(messages)))
    assert [a["63"] for a in answers] == [m["network_transaction_id"] for m in messages]
    assert [a["4"] for a in answers] == [f"{100 + i:012d}" for i in range(200)]
    assert {a["39"] for a in answers} == {"00"}
    batches = _histogram(BATCH_SIZE)[0] - count_before
    assert batches < 100, batches
    for link in links:
        await link.close()


def _histogram(histogram: Any) -> tuple[float, float]:
    count = total = 0.0
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total
