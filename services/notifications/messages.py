"""What a push says: the message templates, and fitting a message into a provider's payload limit.

Pure: no database, no network, no web framework. Inputs are the fields of a `transactions.feed` event
(docs/events.md); amounts are integer minor units, formatted for the transaction's own currency.

    ☕ £19.15 at Brightbird Espresso. You've spent £43.55 today.
    Your payment of £12.00 at Pret A Manger was declined: insufficient funds
    💰 £100.00 top up. Balance £143.55
    💸 Jane Doe sent you £10.00: pizza
    🍯 £25.00 moved into Holiday. Balance £75.00
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.money import CURRENCIES, SYMBOLS

ELLIPSIS = "…"

DECLINE_REASONS = {
    "INSUFFICIENT_FUNDS": "insufficient funds",
    "CARD_INACTIVE": "your card is frozen or cancelled",
    "CARD_BLOCKED": "your card settings block this payment",
    "INVALID_CVC": "the security code was wrong",
    "INVALID_EXPIRY_DATE": "the expiry date was wrong",
    "OTHER": "we could not approve it",
}


@dataclass(frozen=True)
class Message:
    kind: str  # card_payment | declined | topup | refund | atm_withdrawal | reversed | feed_item
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)  # ids for the app, string values only


def money(amount: int, currency: str) -> str:
    """£19.15, €3.00, $1,250.00, ¥500: the currency's symbol and its number of decimals."""
    digits = CURRENCIES.get(currency, 2)
    symbol = SYMBOLS.get(currency, f"{currency} ")
    sign = "-" if amount < 0 else ""
    units, minor = divmod(abs(amount), 10**digits)
    number = f"{units:,}" if digits == 0 else f"{units:,}.{minor:0{digits}d}"
    return f"{sign}{symbol}{number}"


def _merchant(tx: Mapping[str, Any]) -> tuple[str, str]:
    """(name, emoji) of the transaction's merchant; the description when there is no merchant."""
    merchant = tx.get("merchant")
    if isinstance(merchant, Mapping):
        name = str(merchant.get("name") or "").strip()
        emoji = str(merchant.get("emoji") or "").strip()
        if name:
            return name, emoji
    return str(tx.get("description") or "").strip() or "a merchant", ""


def _decline_reason(code: str) -> str:
    return DECLINE_REASONS.get(code, code.replace("_", " ").lower() or DECLINE_REASONS["OTHER"])


def _prefixed(emoji: str, text: str) -> str:
    return f"{emoji} {text}" if emoji else text


def transaction_message(event_type: str, data: Mapping[str, Any]) -> Message | None:
    """The push for one `transactions.feed` event, or None when it deserves none.

    `transaction.created` always notifies; of the updates only a reversal of a card payment does
    (settlement and notes are not news to the customer).
    """
    tx = data.get("transaction") or {}
    kind = str(data.get("kind") or "")
    currency = str(tx.get("currency") or "GBP")
    amount = abs(int(tx.get("amount") or 0))
    name, emoji = _merchant(tx)
    spend = data.get("spend_today") or {}
    spent = money(int(spend.get("amount") or 0), str(spend.get("currency") or currency))
    ids = {
        "transaction_id": str(tx.get("id") or ""),
        "account_id": str(data.get("account_id") or ""),
    }

    if event_type == "transaction.updated":
        if data.get("change") == "reversed" and kind == "card_payment":
            body = f"Your payment of {money(amount, currency)} at {name} was cancelled by the merchant"
            return Message("reversed", "Payment cancelled", body, ids)
        return None
    if event_type != "transaction.created":
        return None

    if decline := tx.get("decline_reason"):
        what = "cash withdrawal" if kind == "atm_withdrawal" else "payment"
        why = _decline_reason(str(decline))
        body = f"Your {what} of {money(amount, currency)} at {name} was declined: {why}"
        return Message("declined", "Payment declined", body, ids)
    if kind == "topup":
        balance = money(int(tx.get("account_balance") or 0), currency)
        return Message("topup", "Top up", f"💰 {money(amount, currency)} top up. Balance {balance}", ids)
    if kind == "p2p_payment":
        return _payment_message(tx, amount, currency, ids)
    if kind == "pot_transfer":
        pot = str(_field(tx, "metadata", "pot_name")).strip() or "your pot"
        balance = money(int(tx.get("account_balance") or 0), currency)
        way = "into" if int(tx.get("amount") or 0) < 0 else "out of"
        body = f"🍯 {money(amount, currency)} moved {way} {pot}. Balance {balance}"
        return Message("pot_transfer", "Pot", body, ids)
    if kind == "refund":
        balance = money(int(tx.get("account_balance") or 0), currency)
        body = _prefixed(emoji or "↩️", f"{money(amount, currency)} refund from {name}. Balance {balance}")
        return Message("refund", "Refund", body, ids)
    if kind == "atm_withdrawal":
        body = f"🏧 {money(amount, currency)} cash from {name}. You've spent {spent} today."
        return Message("atm_withdrawal", "Cash withdrawal", body, ids)
    if kind == "card_payment":
        body = _prefixed(emoji, f"{money(amount, currency)} at {name}. You've spent {spent} today.")
        return Message("card_payment", "Payment", body, ids)
    return None


def _field(tx: Mapping[str, Any], section: str, name: str) -> object:
    """tx[section][name], or "" when either is missing or not what it should be."""
    inner = tx.get(section)
    return (inner.get(name) or "") if isinstance(inner, Mapping) else ""


def _payment_message(tx: Mapping[str, Any], amount: int, currency: str, ids: dict[str, str]) -> Message:
    """A payment between customers, as each side sees it: "💸 Jane Doe sent you £10.00: pizza"."""
    other = str(_field(tx, "counterparty", "name")).strip() or "Someone"
    note = str(_field(tx, "metadata", "p2p_reference")).strip()
    suffix = f": {note}" if note else ""
    if int(tx.get("amount") or 0) > 0:
        return Message(
            "p2p_received", "Payment received", f"💸 {other} sent you {money(amount, currency)}{suffix}", ids
        )
    return Message("p2p_sent", "Payment sent", f"💸 You sent {other} {money(amount, currency)}{suffix}", ids)


def webhook_disabled_message(url: str) -> Message:
    body = f"We stopped sending events to your webhook {url} after it kept failing. Re-register it to resume."
    return Message("webhook_disabled", "Webhook disabled", body)


# -- fitting into the provider's payload limit ------------------------------------------------------


class PayloadTooLarge(ValueError):
    """Even an empty title and body do not fit: the payload's fixed part is too big (a bug)."""


def _cut(text: str, keep: int) -> str:
    if keep >= len(text):
        return text
    return text[:keep].rstrip() + ELLIPSIS


def _longest(text: str, fits: Callable[[str], bool]) -> str:
    """The longest cut of `text` (ending in an ellipsis) for which `fits` holds; "" if none does."""
    if fits(text):
        return text
    lo, hi = 0, len(text) - 1  # invariant: cut(lo) fits or lo == 0; cut(hi + 1) does not
    best = ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _cut(text, mid) if mid else ""
        if fits(candidate):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def fit(title: str, body: str, render: Callable[[str, str], bytes], limit: int) -> tuple[str, str]:
    """Shorten `body` (then, only if needed, `title`) until `render(title, body)` is at most `limit`
    bytes. Characters are cut whole (never half a UTF-8 sequence) and an ellipsis marks the cut."""
    if len(render(title, body)) <= limit:
        return title, body
    if len(render(title, "")) <= limit:
        return title, _longest(body, lambda b: len(render(title, b)) <= limit)
    if len(render("", "")) > limit:
        raise PayloadTooLarge(f"the payload exceeds {limit} bytes with an empty title and body")
    return _longest(title, lambda t: len(render(t, "")) <= limit), ""
