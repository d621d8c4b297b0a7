"""The message templates (pure) and fitting a message into the 4 KiB payload limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifications.messages import (
    ELLIPSIS,
    PayloadTooLarge,
    fit,
    money,
    transaction_message,
    webhook_disabled_message,
)
from services.notifications.providers import PAYLOAD_LIMIT, Push, apns, compact_json, fcm
from services.notifications.providers.apns import fitted_payload
from services.notifications.providers.fcm import fitted_body


def event(
    kind: str = "card_payment", spend: int = 4355, change: str = "created", **tx: Any
) -> dict[str, Any]:
    transaction = {
        "id": "tx_1",
        "amount": -1915,
        "currency": "GBP",
        "merchant": {"name": "Brightbird Espresso", "emoji": "☕"},
        "description": "BRIGHTBIRD ESPRESSO",
        "account_balance": 14355,
        **tx,
    }
    return {
        "account_id": "acc_1",
        "user_id": "user_1",
        "kind": kind,
        "change": change,
        "version": 1,
        "spend_today": {"amount": spend, "currency": transaction["currency"]},
        "transaction": transaction,
    }


def body(event_type: str, data: dict[str, Any]) -> str:
    message = transaction_message(event_type, data)
    assert message is not None
    return message.body


def test_card_payment() -> None:
    assert (
        body("transaction.created", event()) == "☕ £19.15 at Brightbird Espresso. You've spent £43.55 today."
    )
    message = transaction_message("transaction.created", event())
    assert message is not None
    assert message.kind == "card_payment"
    assert message.data == {"transaction_id": "tx_1", "account_id": "acc_1"}


def test_card_payment_without_emoji_or_merchant() -> None:
    assert body("transaction.created", event(merchant={"name": "Corner Shop", "emoji": None})) == (
        "£19.15 at Corner Shop. You've spent £43.55 today."
    )
    assert body("transaction.created", event(merchant=None, description="TFL TRAVEL")) == (
        "£19.15 at TFL TRAVEL. You've spent £43.55 today."
    )


def test_declined_payment() -> None:
    data = event(
        amount=-1200, merchant={"name": "Pret A Manger", "emoji": "🥪"}, decline_reason="INSUFFICIENT_FUNDS"
    )
    assert body("transaction.created", data) == (
        "Your payment of £12.00 at Pret A Manger was declined: insufficient funds"
    )
    frozen = event(amount=-1200, merchant={"name": "Pret A Manger"}, decline_reason="CARD_INACTIVE")
    assert body("transaction.created", frozen).endswith("was declined: your card is frozen or cancelled")
    unknown = event(amount=-1200, merchant={"name": "Pret A Manger"}, decline_reason="VELOCITY_LIMIT")
    assert body("transaction.created", unknown).endswith("was declined: velocity limit")


def test_top_up() -> None:
    data = event(kind="topup", amount=10_000, merchant=None, description="Top up", account_balance=14355)
    assert body("transaction.created", data) == "💰 £100.00 top up. Balance £143.55"


def test_refund() -> None:
    data = event(
        kind="refund", amount=500, merchant={"name": "Pret A Manger", "emoji": "🥪"}, account_balance=14855
    )
    assert body("transaction.created", data) == "🥪 £5.00 refund from Pret A Manger. Balance £148.55"
    plain = event(kind="refund", amount=500, merchant={"name": "Pret A Manger"}, account_balance=14855)
    assert body("transaction.created", plain) == "↩️ £5.00 refund from Pret A Manger. Balance £148.55"


def test_atm_withdrawal() -> None:
    data = event(kind="atm_withdrawal", amount=-5000, merchant={"name": "Sainsbury's ATM"}, spend=9355)
    assert (
        body("transaction.created", data) == "🏧 £50.00 cash from Sainsbury's ATM. You've spent £93.55 today."
    )
    declined = event(
        kind="atm_withdrawal",
        amount=-5000,
        merchant={"name": "Sainsbury's ATM"},
        decline_reason="INSUFFICIENT_FUNDS",
    )
    assert body("transaction.created", declined) == (
        "Your cash withdrawal of £50.00 at Sainsbury's ATM was declined: insufficient funds"
    )


def test_updates_notify_only_reversals() -> None:
    assert transaction_message("transaction.updated", event(change="settled")) is None
    assert transaction_message("transaction.updated", event(change="annotated")) is None
    assert body("transaction.updated", event(change="reversed")) == (
        "Your payment of £19.15 at Brightbird Espresso was cancelled by the merchant"
    )
    assert transaction_message("transaction.deleted", event()) is None


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (1915, "GBP", "£19.15"),
        (300, "EUR", "€3.00"),
        (125_000, "USD", "$1,250.00"),
        (500, "JPY", "¥500"),
        (1_000_000, "JPY", "¥1,000,000"),
        (5, "GBP", "£0.05"),
        (-1915, "GBP", "-£19.15"),
        (1234, "SEK", "SEK 12.34"),
        (1234, "XTS", "XTS 12.34"),  # not a currency we know: the code, two decimals
    ],
)
def test_money(amount: int, currency: str, expected: str) -> None:
    assert money(amount, currency) == expected


def test_card_payment_in_other_currencies() -> None:
    euro = event(amount=-350, currency="EUR", merchant={"name": "Café Central", "emoji": "☕"}, spend=1200)
    assert body("transaction.created", euro) == "☕ €3.50 at Café Central. You've spent €12.00 today."
    dollars = event(amount=-1999, currency="USD", merchant={"name": "Blue Bottle", "emoji": "☕"}, spend=1999)
    assert body("transaction.created", dollars) == "☕ $19.99 at Blue Bottle. You've spent $19.99 today."
    yen = event(amount=-480, currency="JPY", merchant={"name": "Lawson", "emoji": "🏪"}, spend=1480)
    assert body("transaction.created", yen) == "🏪 ¥480 at Lawson. You've spent ¥1,480 today."


def test_webhook_disabled() -> None:
    message = webhook_disabled_message("https://example.com/hook")
    assert message.title == "Webhook disabled"
    assert "https://example.com/hook" in message.body


# -- the 4 KiB limit ---------------------------------------------------------------------------------


def render(title: str, text: str) -> bytes:
    return json.dumps({"t": title, "b": text}, ensure_ascii=False).encode()


def test_fit_leaves_short_messages_alone() -> None:
    assert fit("Payment", "☕ £19.15", render, 4096) == ("Payment", "☕ £19.15")


def test_fit_cuts_the_body_at_a_character_and_marks_it() -> None:
    title, text = fit("Payment", "☕" * 5000, render, 4096)
    assert title == "Payment"
    assert len(render(title, text)) <= 4096
    assert text.endswith(ELLIPSIS)
    assert set(text[:-1]) == {"☕"}
    assert len(render(title, text[:-1] + "☕" + ELLIPSIS)) > 4096  # as long as it can be


def test_fit_cuts_the_title_only_when_the_body_is_gone() -> None:
    title, text = fit("T" * 10_000, "body", render, 200)
    assert text == ""
    assert title.endswith(ELLIPSIS)
    assert len(render(title, text)) <= 200


def test_fit_refuses_when_nothing_could_fit() -> None:
    with pytest.raises(PayloadTooLarge):
        fit("a", "b", lambda t, b: b"x" * 5000, 4096)


@pytest.mark.parametrize("text", ["x" * 20_000, "☕" * 20_000, '"\\' * 10_000, "é" * 9_999, "\n" * 9_000])
def test_provider_payloads_never_exceed_4_kib(text: str) -> None:
    push = Push("6f1d4c1e-0000-4000-8000-000000000001", "ab" * 32, "Ti" * 300, text, {"account_id": "acc_1"})
    apns = fitted_payload(push)
    fcm = fitted_body(push)
    assert len(apns) <= PAYLOAD_LIMIT
    assert len(fcm) <= PAYLOAD_LIMIT
    assert json.loads(apns)["aps"]["alert"]["body"].endswith(ELLIPSIS)
    assert json.loads(fcm)["message"]["notification"]["body"].endswith(ELLIPSIS)


def test_payments_between_customers_tell_each_side() -> None:
    received = event(
        kind="p2p_payment", amount=1000, merchant=None, description="pizza",
        counterparty={"user_id": "user_2", "name": "Jane"}, metadata={"p2p_reference": "pizza"},
    )  # fmt: skip
    assert body("transaction.created", received) == "💸 Jane sent you £10.00: pizza"
    sent = event(
        kind="p2p_payment", amount=-1000, merchant=None, counterparty={"user_id": "user_3", "name": "Sam"},
        metadata={"p2p_reference": ""},
    )  # fmt: skip
    assert body("transaction.created", sent) == "💸 You sent Sam £10.00"
    assert transaction_message("transaction.updated", received) is None


def test_pot_moves() -> None:
    into = event(
        kind="pot_transfer",
        amount=-2500,
        merchant=None,
        metadata={"pot_name": "Holiday"},
        account_balance=7500,
    )
    assert body("transaction.created", into) == "🍯 £25.00 moved into Holiday. Balance £75.00"
    out = event(kind="pot_transfer", amount=500, merchant=None, metadata={}, account_balance=8000)
    assert body("transaction.created", out) == "🍯 £5.00 moved out of your pot. Balance £80.00"


DATA = st.dictionaries(
    st.one_of(st.sampled_from(["aps", "push_id", "account_id", "url"]), st.text(max_size=10)),
    st.one_of(st.text(max_size=20), st.integers()),
    max_size=4,
)


@given(title=st.text(max_size=40), body=st.text(max_size=80), token=st.text(max_size=20), data=DATA)
def test_provider_bodies_are_the_documents_as_compact_json(
    title: str, body: str, token: str, data: dict[str, Any]
) -> None:
    """The adapters render with string templates; byte for byte what json.dumps makes of the documents
    (including data that a template cannot take: non-string values, a key of the template's own)."""
    push = Push("6f1d4c1e-0000-4000-8000-000000000001", token, title, body, data)
    alert = {"title": title, "body": body} if title else {"body": body}
    assert apns.payload(push, title, body) == compact_json(
        {"aps": {"alert": alert, "sound": "default"}, **data}
    )
    assert fcm.render(push, title, body, 60) == compact_json(fcm.message(push, title, body, 60))
