"""A transaction's life in the feed, through the service's own handlers on a real database."""

from __future__ import annotations

from typing import Any

from tests.transactions.conftest import Feed
from tests.transactions.events import (
    Authorisation,
    account_created,
    at,
    offline_settlement,
    posted,
    refund,
    topup,
)

ACC, USER = "acc_ada", "user_ada"


def data_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events]


async def test_a_card_payment_is_created_pending_then_settled_in_place(feed: Feed) -> None:
    auth = Authorisation(ACC, 1_915)
    await feed.apply(account_created(ACC, USER), topup(ACC, 5_000, 5_000, at(0)))
    await feed.apply(auth.hold(3_085, at(1)), auth.approved(at(1.01)))
    [created] = data_of(await feed.published("transaction.created"))[1:]  # [0] is the top-up
    tx = created["transaction"]
    assert (created["kind"], created["change"], created["version"]) == ("card_payment", "created", 1)
    assert created["spend_today"] == {"amount": 1_915, "currency": "GBP"}
    assert (tx["amount"], tx["settled"], tx["amount_is_pending"], tx["account_balance"]) == (
        -1_915,
        "",
        True,
        3_085,
    )
    assert tx["description"] == "BRIGHTBIRD ESPRESSO LONDON GB"
    assert tx["merchant"]["name"] == "Brightbird Espresso" and tx["merchant"]["emoji"] == "☕"
    assert tx["category"] == "eating_out" and tx["categories"] == {"eating_out": -1_915}
    assert "decline_reason" not in tx and tx["user_id"] == USER and tx["scheme"] == "mastercard"

    await feed.apply(auth.settled(2_100, at(60 * 24)))  # a tip: cleared for more, the next day
    [updated] = data_of(await feed.published("transaction.updated"))
    assert (updated["change"], updated["version"]) == ("settled", 2)
    tx2 = updated["transaction"]
    assert tx2["id"] == tx["id"] and tx2["amount"] == -2_100 and tx2["amount_is_pending"] is False
    assert tx2["settled"].startswith("2026-11-27T08:15")
    assert updated["spend_today"]["amount"] == 2_100  # its day is the day it was made
    [row] = await feed.rows("SELECT amount FROM transactions.spend_days")
    assert row["amount"] == 2_100


async def test_a_reversed_authorisation_stays_with_amount_zero(feed: Feed) -> None:
    auth = Authorisation(ACC, 4_000)
    await feed.apply(account_created(ACC, USER), auth.approved(at(0)), auth.reversed(1_500, at(1)))
    partial = data_of(await feed.published("transaction.updated"))[-1]
    assert partial["change"] == "reversed" and partial["transaction"]["amount"] == -1_500
    assert partial["spend_today"]["amount"] == 1_500
    await feed.apply(auth.reversed(0, at(2)))
    last = data_of(await feed.published("transaction.updated"))[-1]
    tx = last["transaction"]
    assert (last["change"], last["version"]) == ("reversed", 3)
    assert (tx["amount"], tx["reversed"], tx["amount_is_pending"], tx["settled"]) == (0, True, False, "")
    assert last["spend_today"]["amount"] == 0


async def test_a_decline_shows_its_reason_and_counts_for_nothing(feed: Feed) -> None:
    auth = Authorisation(ACC, 9_999)
    await feed.apply(account_created(ACC, USER), topup(ACC, 1_000, 1_000, at(0)), auth.declined(at(5)))
    [_, declined] = data_of(await feed.published("transaction.created"))
    tx = declined["transaction"]
    assert tx["decline_reason"] == "INSUFFICIENT_FUNDS" and tx["amount"] == -9_999
    assert tx["account_balance"] == 1_000  # the balance it left untouched
    assert declined["spend_today"]["amount"] == 0 and tx["include_in_spending"] is False


async def test_a_topup_is_a_load_in_the_mondo_category(feed: Feed) -> None:
    await feed.apply(account_created(ACC, USER), topup(ACC, 10_000, 12_500, at(0), topup_id="topup_1"))
    [created] = data_of(await feed.published("transaction.created"))
    tx = created["transaction"]
    assert created["kind"] == "topup"
    assert (tx["is_load"], tx["category"], tx["description"], tx["amount"]) == (
        True,
        "mondo",
        "Top up",
        10_000,
    )
    assert tx["merchant"] is None and tx["settled"] == tx["created"] and tx["account_balance"] == 12_500


async def test_refunds_and_offline_clearing_are_their_own_transactions(feed: Feed) -> None:
    await feed.apply(account_created(ACC, USER), topup(ACC, 10_000, 10_000, at(0)))
    await feed.apply(
        offline_settlement(ACC, 700, "P-OFF-1", at(1)), posted(ACC, "presentment:P-OFF-1", -700, 9_300, at(1))
    )
    await feed.apply(
        refund(ACC, 250, "P-REF-1", at(2)), posted(ACC, "presentment:P-REF-1", 250, 9_550, at(2))
    )
    created = data_of(await feed.published("transaction.created"))
    kinds = [(c["kind"], c["transaction"]["amount"]) for c in created]
    assert kinds == [("topup", 10_000), ("card_payment", -700), ("refund", 250)]
    assert created[-1]["spend_today"]["amount"] == 450  # the refund takes its amount off today's spend
    rows = await feed.rows("SELECT account_balance FROM transactions.transactions ORDER BY created")
    assert [r["account_balance"] for r in rows] == [10_000, 9_300, 9_550]


async def test_a_clearing_before_its_authorisation_makes_one_transaction(feed: Feed) -> None:
    auth = Authorisation(ACC, 1_000)
    await feed.apply(account_created(ACC, USER), auth.settled(1_000, at(30)))
    await feed.apply(auth.approved(at(0)))
    rows = await feed.rows("SELECT id, created, version FROM transactions.transactions")
    assert len(rows) == 1 and rows[0]["created"] == at(0)
    created = data_of(await feed.published("transaction.created"))
    assert len(created) == 1 and created[0]["transaction"]["settled"] != ""


async def test_nothing_is_announced_before_the_owner_is_known(feed: Feed) -> None:
    auth = Authorisation(ACC, 1_000)
    await feed.apply(auth.approved(at(0)), auth.settled(1_000, at(10)))
    assert await feed.published() == []
    await feed.apply(account_created(ACC, USER))
    [created] = data_of(await feed.published())
    assert created["user_id"] == USER and created["version"] == 2 and created["transaction"]["settled"] != ""
    await feed.apply(account_created(ACC, USER))  # a redelivery: nothing new
    assert len(await feed.published()) == 1


async def test_redelivered_events_change_nothing(feed: Feed) -> None:
    auth = Authorisation(ACC, 1_000)
    approved, settled = auth.approved(at(0)), auth.settled(900, at(10))
    await feed.apply(account_created(ACC, USER), approved, settled, approved, settled, settled)
    assert [e["type"] for e in await feed.published()] == ["transaction.created", "transaction.updated"]
    [row] = await feed.rows("SELECT amount FROM transactions.spend_days")
    assert row["amount"] == 900


async def test_balance_inquiries_and_refund_authorisations_make_no_feed_item(feed: Feed) -> None:
    inquiry = Authorisation(ACC, 0, processing_code="300000")
    refund_auth = Authorisation(ACC, 500, processing_code="200000")
    await feed.apply(account_created(ACC, USER), inquiry.approved(at(0)), refund_auth.approved(at(1)))
    assert await feed.rows("SELECT id FROM transactions.transactions") == []
