"""Events arrive late, twice and out of order: the feed converges to the same result whatever the order.

Two properties, with hypothesis shuffling and duplicating event streams:
* the pure fold of one transaction's events is the same for every order and every duplication;
* the whole feed (transactions as the API renders them, spend today, merchants), built by the service's
  handlers on the real database, is the same for the canonical order and a shuffled, duplicated one;
  every transaction is announced exactly once as created, versions only go up, and the last event
  announced carries the transaction as the feed finally shows it.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from services.transactions import repository as repo
from services.transactions.feed import Fact, fold
from services.transactions.models import SpendDay, Transaction
from shared.events.envelope import Envelope
from tests.transactions.conftest import Feed
from tests.transactions.events import (
    Authorisation,
    account_created,
    at,
    merchant,
    offline_settlement,
    posted,
    refund,
    topup,
)

# The night British Summer Time starts: times from 00:30 to 07:10 UTC cross the 01:00 UTC clock change
# and the 04:00 (London) start of the spending day.
BASE = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
ACC, USER = "acc_prop", "user_prop"
MERCHANTS = [
    merchant(),
    merchant("GREGGS 1234", "5462", "Leeds", "GR0001"),
    merchant("SQ *ADDISON LEE", "4121", "London", "AL0001"),
    merchant("CASH LINK ATM", "6011", "Bristol", "ATM001"),
]

OUTCOMES = ("declined", "pending", "partly_reversed", "reversed", "settled", "settled_after_reversal",
            "settled_only", "split_settlement")  # fmt: skip


@st.composite
def authorisation_events(draw: st.DrawFn) -> list[Envelope]:
    amount = draw(st.integers(1, 50_000))
    code = draw(st.sampled_from(["000000", "010000"]))
    a = Authorisation(ACC, amount, draw(st.sampled_from(MERCHANTS)), code)
    start = draw(st.integers(0, 400))
    outcome = draw(st.sampled_from(OUTCOMES))
    if outcome == "declined":
        return [a.declined(at(start, BASE))]
    events = [] if outcome == "settled_only" else [a.approved(at(start, BASE))]
    if outcome != "settled_only" and draw(st.booleans()):
        events.append(a.hold(draw(st.integers(0, 100_000)), at(start - 0.01, BASE)))
    if outcome in ("partly_reversed", "reversed", "settled_after_reversal"):
        remaining = (
            draw(st.integers(1, amount)) - 1 if outcome == "reversed" else draw(st.integers(0, amount))
        )
        if outcome == "reversed":
            remaining = 0
        if amount > 1 and draw(st.booleans()):
            events.append(a.reversed(max(remaining, amount // 2), at(start + 1, BASE)))
        events.append(a.reversed(remaining, at(start + 2, BASE)))
    if outcome in ("settled", "settled_after_reversal", "settled_only"):
        events.append(a.settled(draw(st.integers(1, amount + 1_000)), at(start + 600, BASE)))
    if outcome == "split_settlement":
        events.append(a.settled(amount // 2 or 1, at(start + 600, BASE)))
        events.append(a.settled(amount - amount // 2, at(start + 700, BASE)))
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> list[Envelope]:
    events = [account_created(ACC, USER, at(0, BASE)), topup(ACC, 100_000, 100_000, at(1, BASE))]
    for _ in range(draw(st.integers(1, 4))):
        events += draw(authorisation_events())
    if draw(st.booleans()):
        minute = draw(st.integers(0, 400))
        events += [offline_settlement(ACC, 1_234, f"P-OFF-{minute}", at(minute, BASE)),
                   posted(ACC, f"presentment:P-OFF-{minute}", -1_234, 50_000, at(minute, BASE))]  # fmt: skip
    if draw(st.booleans()):
        minute = draw(st.integers(0, 400))
        ref = f"P-REF-{minute}"
        events += [refund(ACC, 500, ref, at(minute, BASE)),
                   posted(ACC, f"presentment:{ref}", 500, 60_000, at(minute + 0.01, BASE))]  # fmt: skip
    return events


def shuffled_with_duplicates(data: st.DataObject, events: list[Envelope]) -> list[Envelope]:
    again = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="duplicates")
    return data.draw(st.permutations(events + again), label="order")


def random_batches(data: st.DataObject, events: list[Envelope]) -> list[list[Envelope]]:
    cuts = data.draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=6), label="batch cuts")
    bounds = [0, *sorted(c for c in cuts if c < len(events)), len(events)]
    return [events[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def facts(events: list[Envelope]) -> list[Fact]:
    return [Fact(e.id, e.type, e.time, e.data) for e in events]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_fold_of_a_transaction_ignores_order_and_duplicates(data: st.DataObject) -> None:
    events = data.draw(authorisation_events(), label="events")
    card_events = [e for e in events if e.type.startswith("card.")]
    expected = fold(facts(card_events))
    assert fold(facts(shuffled_with_duplicates(data, card_events))) == expected


async def feed_state(feed: Feed) -> dict[str, Any]:
    async with feed.db.read() as session:
        rendered = {}
        for tx_id in await session.scalars(select(Transaction.id).order_by(Transaction.id)):
            # What GET /transactions/{id}?expand[]=merchant answers.
            found = await repo.one_json(session, tx_id, expand=True)
            assert found is not None
            rendered[tx_id] = json.loads(found[1])["transaction"]
        # A day whose spend went back to 0 may keep its row in one order and never get one in another.
        spend = {(s.day, s.currency): s.amount for s in await session.scalars(select(SpendDay)) if s.amount}
    return {"transactions": rendered, "spend": spend}


def without_merchant_times(tx: dict[str, Any]) -> dict[str, Any]:
    # A merchant's created/updated span every sighting (of any transaction), so an event carries the
    # merchant as it stood then; the transaction itself must be the final one.
    if isinstance(tx.get("merchant"), dict):
        tx = {**tx, "merchant": {k: v for k, v in tx["merchant"].items() if k not in ("created", "updated")}}
    return tx


def difference(got: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    diff: dict[str, Any] = {}
    if got["spend"] != expected["spend"]:
        diff["spend"] = (got["spend"], expected["spend"])
    for tx_id in set(got["transactions"]) | set(expected["transactions"]):
        a, b = got["transactions"].get(tx_id, {}), expected["transactions"].get(tx_id, {})
        if fields := {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}:
            diff[tx_id] = fields
    return diff


async def check_announcements(feed: Feed, final: dict[str, dict[str, Any]]) -> None:
    events = await feed.published()
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_tx.setdefault(e["data"]["transaction"]["id"], []).append(e)
    assert set(by_tx) == set(final)
    for tx_id, seen in by_tx.items():
        assert [e["type"] for e in seen][:1] == ["transaction.created"]
        assert sum(e["type"] == "transaction.created" for e in seen) == 1
        versions = [e["data"]["version"] for e in seen]
        assert versions == sorted(set(versions)), versions
        last = seen[-1]["data"]["transaction"]
        assert without_merchant_times(last) == without_merchant_times(final[tx_id])


@settings(
    max_examples=15,
    deadline=None,
    # No shrinking: every example is two runs on the database, and ids are fresh on every draw, so
    # shrinking makes slow progress; the failing example is printed whole instead.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_the_feed_converges_whatever_the_order(feed: Feed, data: st.DataObject) -> None:
    events = data.draw(scenarios(), label="events")
    await feed.clear()
    await feed.apply(*sorted(events, key=lambda e: e.time))
    expected = await feed_state(feed)
    await check_announcements(feed, expected["transactions"])

    await feed.clear()
    shuffled = shuffled_with_duplicates(data, events)
    await feed.apply(*shuffled)
    got = await feed_state(feed)
    assert difference(got, expected) == {}
    await check_announcements(feed, got["transactions"])

    # The consumer's batch path: the same shuffled, duplicated stream cut into random batches (a
    # transaction's events together or apart, duplicates inside a batch and across batches).
    await feed.clear()
    await feed.apply_batches(*random_batches(data, shuffled))
    got = await feed_state(feed)
    assert difference(got, expected) == {}
    await check_announcements(feed, got["transactions"])
