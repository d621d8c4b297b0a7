"""The Mondo/Monzo JSON of a transaction and of a merchant (docs.monzo.com, today's full shape)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.transactions.feed import FeedItem
from services.transactions.models import Merchant, Transaction

TOPUP_CATEGORY = "mondo"


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def merchant_json(m: Merchant) -> dict[str, Any]:
    return {
        "id": m.id,
        "group_id": m.group_id,
        "created": rfc3339(m.created),
        "name": m.name,
        "logo": m.logo,
        "emoji": m.emoji,
        "category": m.category,
        "online": m.online,
        "atm": m.atm,
        "address": m.address,
        "updated": rfc3339(m.updated),
        "metadata": {},
        "disable_feedback": False,
    }


def _dedupe_id(item: FeedItem) -> str:
    if item.kind == "topup":
        return f"com.mondo.topup:{item.key.removeprefix('topup:')}"
    return f"mastercard:{item.network_transaction_id or item.key}"


def transaction_json(tx: Transaction, merchant: Merchant | None, *, expand_merchant: bool) -> dict[str, Any]:
    item = FeedItem.from_json(tx.item)
    card = item.kind != "topup"
    live = card and not item.declined
    updated = max(item.updated, tx.annotated) if tx.annotated else item.updated
    if merchant is None:
        merchant_field: Any = None
    else:
        merchant_field = merchant_json(merchant) if expand_merchant else merchant.id
    body: dict[str, Any] = {
        "id": tx.id,
        "created": rfc3339(item.created),
        "description": item.description,
        "amount": item.amount,
        "fees": {},
        "currency": item.currency,
        "merchant": merchant_field,
        "notes": tx.notes,
        "metadata": dict(tx.metadata_),
        "labels": None,
        "attachments": None,
        "international": None,
        "category": tx.category,
        "categories": {tx.category: item.amount},
        "is_load": item.kind == "topup",
        "settled": rfc3339(item.settled) if item.settled else "",
        "local_amount": item.amount,
        "local_currency": item.currency,
        "updated": rfc3339(updated),
        "account_id": tx.account_id,
        "user_id": tx.user_id or "",
        "counterparty": {},
        "scheme": "mastercard" if card else "topup",
        "dedupe_id": _dedupe_id(item),
        "originator": False,
        "include_in_spending": live,
        "can_be_excluded_from_breakdown": live,
        "can_be_made_subscription": False,
        "can_split_the_bill": live and item.kind == "card_payment",
        "can_add_to_tab": live and item.kind == "card_payment",
        "can_match_transactions_in_categorization": live,
        "amount_is_pending": item.pending,
        "atm_fees_detailed": _atm_fees(item) if item.kind == "atm_withdrawal" else None,
        "parent_account_id": "",
        "account_balance": tx.account_balance or 0,
        "reversed": item.reversed,
    }
    if item.declined:
        body["decline_reason"] = item.decline_reason or "OTHER"
    return body


def _atm_fees(item: FeedItem) -> dict[str, Any]:
    return {
        "withdrawal_amount": -item.amount,
        "withdrawal_currency": item.currency,
        "fee_amount": 0,
        "fee_currency": item.currency,
        "fee_summaries": [],
    }
