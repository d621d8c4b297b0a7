"""A feed item's stored JSON (FeedItem.to_json, written field by field) holds every field and reads
back to the same item."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime

from services.transactions.events import NetworkMerchant
from services.transactions.feed import FeedItem


def full_item() -> FeedItem:
    """Every field set to something other than its default."""
    return FeedItem(
        key="auth:auth_1", account_id="acc_1", kind="card_payment", amount=-1250, currency="GBP",
        created=datetime(2026, 12, 6, 7, 30, tzinfo=UTC), updated=datetime(2026, 12, 6, 7, 31, tzinfo=UTC),
        settled=datetime(2026, 12, 7, 9, 0, tzinfo=UTC), declined=True, decline_reason="INSUFFICIENT_FUNDS",
        reversed=True, description="BRIGHTBIRD ESPRESSO LONDON GBR",
        merchant=NetworkMerchant(id="m1", name="Brightbird Espresso", mcc="5814", city="London",
                                 country="GBR"),
        card_last4="4242", network_transaction_id="ntx_1", balance_refs=("ntx_1", "advice:ntx_1"),
        counterparty={"user_id": "user_2", "name": "Jane"}, metadata={"pot_id": "pot_1"},
    )  # fmt: skip


def test_the_json_names_every_field() -> None:
    assert set(full_item().to_json()) == {f.name for f in fields(FeedItem)}


def test_the_json_reads_back_to_the_same_item() -> None:
    item = full_item()
    assert FeedItem.from_json(item.to_json()) == item
    assert FeedItem.from_json(FeedItem(**{**item.__dict__, "settled": None, "merchant": None}).to_json()) == (
        FeedItem(**{**item.__dict__, "settled": None, "merchant": None})
    )


def test_the_json_shares_no_mutable_value_with_the_item() -> None:
    item = full_item()
    doc = item.to_json()
    doc["counterparty"]["name"] = "someone else"
    doc["metadata"].clear()
    assert item.counterparty == {"user_id": "user_2", "name": "Jane"}
    assert item.metadata == {"pot_id": "pot_1"}
