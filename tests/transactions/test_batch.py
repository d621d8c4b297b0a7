"""The consumer's batch path (FeedProjector.on_batch): a whole batch folded in a few statements, with the
per-event handlers as the fallback. The convergence property runs through it too (test_convergence.py)."""

from __future__ import annotations

from typing import Any

from tests.transactions.conftest import BATCH_CONSUMER, Feed
from tests.transactions.events import Authorisation, account_created, at, topup

ACC, USER = "acc_batch", "user_batch"
OTHER_ACC, OTHER = "acc_batch2", "user_batch2"


async def feed_items(feed: Feed) -> dict[str, dict[str, Any]]:
    rows = await feed.rows("SELECT id, body FROM transactions.transactions ORDER BY id")
    return {r["id"]: r["body"] for r in rows}


async def test_a_transactions_events_in_one_batch_are_folded_and_announced_once(feed: Feed) -> None:
    await feed.clear()
    coffee = Authorisation(ACC, 1_915)
    await feed.apply_batches([
        coffee.settled(2_000, at(600)), account_created(ACC, USER, at(0)), topup(ACC, 5_000, 5_000, at(0)),
        coffee.approved(at(1)), coffee.hold(3_085, at(1)), coffee.approved(at(1)),
    ])  # fmt: skip
    items = sorted((await feed_items(feed)).values(), key=lambda b: b["created"])
    assert [(i["amount"], i["settled"] != "", i["account_balance"]) for i in items] == [
        (5_000, True, 5_000), (-2_000, True, 3_085),
    ]  # fmt: skip
    published = await feed.published()
    assert [(e["type"], e["data"]["version"]) for e in published] == [
        ("transaction.created", 1), ("transaction.created", 1),
    ]  # fmt: skip
    # In batch order: the payment's first event came first.
    assert [e["data"]["kind"] for e in published] == ["card_payment", "topup"]
    payment = published[0]["data"]
    assert payment["spend_today"] == {"amount": 2_000, "currency": "GBP"}
    assert payment["transaction"]["merchant"]["name"] == "Brightbird Espresso"

    # A later batch: a balance-only change and a new transaction, each announced once, versions going up.
    tea = Authorisation(ACC, 250)
    await feed.apply_batches([tea.approved(at(700)), tea.hold(2_835, at(700)), coffee.approved(at(1))])
    published = await feed.published()
    assert [(e["type"], e["data"]["version"]) for e in published[2:]] == [("transaction.created", 1)]
    assert published[2]["data"]["spend_today"]["amount"] == 2_250
    assert published[2]["data"]["transaction"]["account_balance"] == 2_835


async def test_a_poison_event_falls_back_and_the_rest_of_the_batch_lands(feed: Feed) -> None:
    await feed.clear()
    good, also_good, poison = Authorisation(ACC, 1_000), Authorisation(OTHER_ACC, 700), Authorisation(ACC, 5)
    bad = poison.approved(at(2))
    bad.data.pop("merchant")  # cannot be read as a card event: the batch path raises on it
    batch = [
        account_created(ACC, USER, at(0)), account_created(OTHER_ACC, OTHER, at(0)), good.approved(at(1)),
        bad, also_good.approved(at(3)), good.settled(1_000, at(600)),
    ]  # fmt: skip
    await feed.apply_batches(batch, fallbacks=1)

    items = await feed_items(feed)
    assert sorted((b["account_id"], b["amount"], b["settled"] != "") for b in items.values()) == [
        (ACC, -1_000, True), (OTHER_ACC, -700, False),
    ]  # fmt: skip
    dead = await feed.rows(
        "SELECT event_id, attempts FROM transactions.dead_letters WHERE consumer = :c", c=BATCH_CONSUMER
    )
    assert [(d["event_id"], d["attempts"]) for d in dead] == [(bad.id, 3)]
    assert sorted(e["type"] for e in await feed.published()) == [
        "transaction.created", "transaction.created", "transaction.updated",
    ]  # fmt: skip

    # Redelivered, the batch changes nothing (the inbox, then the fold).
    await feed.apply_batches(batch)
    assert await feed_items(feed) == items
    assert len(await feed.published()) == 3
