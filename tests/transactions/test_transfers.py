"""Pot moves and payments between customers in the feed (issue 23, decision 0037): one transaction per
side, in Monzo's shape (scheme uk_retail_pot / p2p_payment, the other party in counterparty), announced
once, the same through the batch path as event by event, and nothing added to spend today."""

from __future__ import annotations

from typing import Any

from tests.transactions.conftest import Feed
from tests.transactions.events import account_created, at, payment, pot_moved, topup

JANE = ("acc_jane", "user_jane", "Jane Doe")
SAM = ("acc_sam", "user_sam", "Sam Lee")


def created(events: list[dict[str, Any]], account_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["data"]["account_id"] == account_id]


async def test_a_pot_move_is_a_transaction_of_the_current_account(feed: Feed) -> None:
    await feed.apply(account_created(JANE[0], JANE[1]), topup(JANE[0], 5_000, 5_000, at(0)))
    await feed.apply(
        pot_moved(JANE[0], "pot_1", -1_000, 4_000, at(1), "potmove_a"),
        pot_moved(JANE[0], "pot_1", 300, 4_300, at(2), "potmove_b"),
    )
    announced = created(await feed.published("transaction.created"), JANE[0])[1:]
    assert [(a["kind"], a["transaction"]["amount"]) for a in announced] == [
        ("pot_transfer", -1_000), ("pot_transfer", 300),
    ]  # fmt: skip
    tx = announced[0]["transaction"]
    assert (tx["scheme"], tx["description"], tx["category"], tx["account_balance"]) == (
        "uk_retail_pot", "pot_1", "savings", 4_000,
    )  # fmt: skip
    assert tx["metadata"] == {"pot_id": "pot_1", "pot_name": "Holiday", "trigger": "user"}
    assert tx["settled"] and tx["amount_is_pending"] is False and tx["include_in_spending"] is False
    assert tx["dedupe_id"] == "com.mondo.pot:potmove_a" and tx["merchant"] is None
    assert announced[0]["spend_today"]["amount"] == 0 and announced[1]["spend_today"]["amount"] == 0


async def test_a_payment_shows_on_both_feeds_with_the_other_party(feed: Feed) -> None:
    await feed.apply(account_created(JANE[0], JANE[1]), account_created(SAM[0], SAM[1]))
    sent, received = payment(JANE, SAM, 1_000, (4_000, 1_000), at(1), payment_id="p2p_1")
    await feed.apply(received, sent)  # each account's events come in its own order
    published = await feed.published("transaction.created")
    [mine], [theirs] = created(published, JANE[0]), created(published, SAM[0])
    assert (mine["kind"], mine["user_id"], theirs["user_id"]) == ("p2p_payment", JANE[1], SAM[1])
    out, into = mine["transaction"], theirs["transaction"]
    assert (out["amount"], into["amount"]) == (-1_000, 1_000)
    assert out["counterparty"] == {"user_id": SAM[1], "name": "Sam Lee"}
    assert into["counterparty"] == {"user_id": JANE[1], "name": "Jane Doe"}
    assert out["scheme"] == into["scheme"] == "p2p_payment" and out["id"] != into["id"]
    assert (out["description"], into["metadata"]["p2p_reference"]) == ("pizza", "pizza")
    assert (out["account_balance"], into["account_balance"]) == (4_000, 1_000)
    assert into["category"] == "transfers" and into["is_load"] is False
    # Redelivered under new event ids (a replayed outbox): the same transactions, not new ones.
    again_sent, again_received = payment(JANE, SAM, 1_000, (4_000, 1_000), at(1), payment_id="p2p_1")
    await feed.apply(again_sent, again_received)
    rows = await feed.rows("SELECT account_id, kind FROM transactions.transactions ORDER BY account_id")
    assert [(r["account_id"], r["kind"]) for r in rows] == [(JANE[0], "p2p_payment"), (SAM[0], "p2p_payment")]


async def test_the_batch_path_shows_the_same_as_event_by_event(feed: Feed) -> None:
    sent, received = payment(JANE, SAM, 700, (4_300, 700), at(2), reference="", payment_id="p2p_b")
    events = [
        account_created(JANE[0], JANE[1]), account_created(SAM[0], SAM[1]),
        topup(JANE[0], 5_000, 5_000, at(0)),
        pot_moved(JANE[0], "pot_1", -1_000, 4_000, at(1), "potmove_c"), sent, received,
    ]  # fmt: skip
    await feed.apply(*events)
    one_by_one = await feed.rows("SELECT id, body FROM transactions.transactions ORDER BY id")
    await feed.clear()
    await feed.apply_batches(events)
    batched = await feed.rows("SELECT id, body FROM transactions.transactions ORDER BY id")
    assert batched == one_by_one and len(batched) == 4
    bodies = {r["body"]["scheme"] + ":" + r["body"]["account_id"]: r["body"] for r in batched}
    assert bodies["p2p_payment:acc_sam"]["description"] == "Jane Doe"  # no reference: the other party
