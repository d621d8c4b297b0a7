"""The Mondo/Monzo JSON of a transaction and of a merchant (docs.monzo.com, today's full shape).

Rendered once per write, not per read: `transaction_json` is stored with each version of a transaction
(`transactions.body`, merchant as an id) and `merchant_doc` with each merchant (`merchants.doc`). A
merchant's `created`/`updated` move with every sighting, so SQL adds them when it expands the merchant
(repository.MERCHANT_JSON, the same RFC 3339 form as `rfc3339`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.transactions.feed import FeedItem
from services.transactions.merchants import MerchantProfile
from services.transactions.models import TransactionRow

TOPUP_CATEGORY = "mondo"
# The category of a transaction with no merchant, by kind; and the scheme Monzo shows for each kind.
CATEGORIES = {"topup": TOPUP_CATEGORY, "pot_transfer": "savings", "p2p_payment": "transfers"}
SCHEMES = {"topup": "topup", "pot_transfer": "uk_retail_pot", "p2p_payment": "p2p_payment"}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def merchant_doc(p: MerchantProfile) -> dict[str, Any]:
    """A merchant's Mondo JSON without `created` and `updated`."""
    return {
        "id": p.id,
        "group_id": p.group_id,
        "name": p.name,
        "logo": p.logo,
        "emoji": p.emoji,
        "category": p.category,
        "online": p.online,
        "atm": p.atm,
        "address": p.address,
        "metadata": {},
        "disable_feedback": False,
    }


def _dedupe_id(item: FeedItem) -> str:
    if item.kind == "topup":
        return f"com.mondo.topup:{item.key.removeprefix('topup:')}"
    if item.kind == "pot_transfer":
        return f"com.mondo.pot:{item.key.removeprefix('pot:')}"
    if item.kind == "p2p_payment":
        return f"com.mondo.p2p:{item.key.removeprefix('p2p:')}"
    return f"mastercard:{item.network_transaction_id or item.key}"


def transaction_json(tx: TransactionRow, item: FeedItem) -> dict[str, Any]:
    """The transaction's Mondo JSON, merchant as its id (or null)."""
    card = item.kind not in SCHEMES
    live = card and not item.declined
    updated = max(item.updated, tx.annotated) if tx.annotated else item.updated
    body: dict[str, Any] = {
        "id": tx.id,
        "created": rfc3339(item.created),
        "description": item.description,
        "amount": item.amount,
        "fees": {},
        "currency": item.currency,
        "merchant": tx.merchant_id,
        "notes": tx.notes,
        "metadata": {**item.metadata, **tx.metadata},
        "labels": None,
        "attachments": list(tx.attachments) or None,
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
        "counterparty": dict(item.counterparty),
        "scheme": "mastercard" if card else SCHEMES[item.kind],
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
        "receipts": list(tx.receipts),
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
