"""Response shapes: the Mondo/Monzo developer API's JSON (docs.monzo.com), plus internal ones."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from services.accounts.models import Account, Hold, User
from shared.errors import BankError

if TYPE_CHECKING:
    from services.accounts.service import HoldResult


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_json(account: Account, owner: User | None) -> dict[str, Any]:
    owners = (
        [{"user_id": owner.id, "preferred_name": owner.name, "preferred_first_name": owner.first_name}]
        if owner
        else []
    )
    return {
        "id": account.id,
        "description": account.description,
        "created": rfc3339(account.created),
        "closed": account.closed,
        "type": account.type,
        "currency": account.currency,
        "country_code": account.country_code,
        "owners": owners,
    }


def balance_json(account: Account, spend_today: int) -> dict[str, Any]:
    # Monzo: balance is what can be spent now; total_balance adds pots (none here);
    # spend_today is negative, as money out is everywhere in the API.
    return {
        "balance": account.available,
        "total_balance": account.available,
        "balance_including_flexible_savings": account.available,
        "currency": account.currency,
        "spend_today": -spend_today,
        "local_currency": "",
        "local_exchange_rate": 0,
        "local_spend": [],
    }


class Money(Protocol):
    """An account's money, however it was read (an ORM object or the hold path's plain row)."""

    @property
    def balance(self) -> int: ...

    @property
    def available(self) -> int: ...


def hold_json(hold: Hold, account: Money) -> dict[str, Any]:
    return {
        "hold": {
            "id": hold.id,
            "account_id": hold.account_id,
            "network_txn_id": hold.network_txn_id,
            "amount": hold.amount,
            "currency": hold.currency,
            "status": hold.status,
            "decline_reason": hold.decline_reason,
            "captured_amount": hold.captured_amount,
            "created": rfc3339(hold.created),
            "expires_at": rfc3339(hold.expires_at),
        },
        "balance": account.balance,
        "available": account.available,
    }


def batch_hold_json(answer: HoldResult | BankError) -> dict[str, Any]:
    """One answer of a batch of holds: the hold's fate, or the typed error of a bad placement."""
    if isinstance(answer, BankError):
        return {"error": {"code": answer.code, "message": answer.message}}
    hold = answer.hold
    return {
        "network_txn_id": hold.network_txn_id,
        "status": hold.status,
        "decline_reason": hold.decline_reason,
    }
