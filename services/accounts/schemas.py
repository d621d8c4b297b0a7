"""Request and response shapes: the Mondo/Monzo developer API's JSON (docs.monzo.com), the form
values' parsers, and the internal card money path's JSON bodies (PlaceHold, Capture, ForcePost)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from services.accounts.models import Account, Hold, Payment, Pot, User
from shared.errors import BankError, bad_request

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


def balance_json(account: Account, spend_today: int, pots: int = 0) -> dict[str, Any]:
    # Monzo: balance is what can be spent now; total_balance adds the account's pots;
    # spend_today is negative, as money out is everywhere in the API.
    return {
        "balance": account.available,
        "total_balance": account.available + pots,
        "balance_including_flexible_savings": account.available + pots,
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


def pot_json(pot: Pot, money: Account) -> dict[str, Any]:
    """A pot as Monzo's developer API shows it; its balance is its own ledger account's."""
    doc: dict[str, Any] = {
        "id": pot.id,
        "name": pot.name,
        "style": pot.style,
        "balance": money.balance,
        "currency": money.currency,
        "created": rfc3339(pot.created),
        "updated": rfc3339(pot.updated),
        "deleted": pot.deleted,
        "current_account_id": pot.current_account_id,
        "type": pot.type,
    }
    if pot.goal_amount is not None:
        doc["goal_amount"] = pot.goal_amount
    return doc


def payment_json(payment: Payment, recipient: User) -> dict[str, Any]:
    return {
        "payment": {
            "id": payment.id,
            "source_account_id": payment.source_account_id,
            "amount": payment.amount,
            "currency": payment.currency,
            "reference": payment.reference,
            "created": rfc3339(payment.created),
            "recipient": {"user_id": recipient.id, "name": recipient.name},
        }
    }


# Request fields of pots and payments: strict, every bad value a typed 400 --------------------------

_STYLE = re.compile(r"^[a-z0-9_]{1,40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 100
MAX_REFERENCE = 140
MAX_DEDUPE_ID = 255
DEFAULT_POT_STYLE = "beach_ball"


def parse_text(value: str, param: str, *, maximum: int, required: bool = True) -> str:
    text = value.strip()
    if required and not text:
        raise bad_request("missing_param", f"{param} is required", param=param)
    if len(text) > maximum or _CONTROL.search(text):
        raise bad_request(
            f"bad_param.{param}",
            f"{param} is at most {maximum} characters, no control characters",
            param=param,
        )
    return text


def parse_style(value: str | None) -> str:
    if value is None or not value.strip():
        return DEFAULT_POT_STYLE
    if not _STYLE.match(value):
        raise bad_request(
            "bad_param.style", "style is a word such as beach_ball (a-z, 0-9, _)", param="style"
        )
    return value


def parse_dedupe_id(value: str) -> str:
    return parse_text(value, "dedupe_id", maximum=MAX_DEDUPE_ID)


# Request bodies of the internal card money path (JSON, from cards).

MAX_HOLDS_PER_BATCH = 1000


class PlaceHold(BaseModel):
    account_id: str
    network_txn_id: str = Field(min_length=1, max_length=128)
    amount: int = Field(gt=0, le=10**12)
    currency: str
    expires_at: datetime | None = None
    traceparent: str | None = Field(default=None, max_length=55)  # the hold's own trace, in a batch


class PlaceHolds(BaseModel):
    """A batch of card authorisations' holds, decided in this order (decision 0030)."""

    holds: list[PlaceHold] = Field(min_length=1, max_length=MAX_HOLDS_PER_BATCH)


class Capture(BaseModel):
    amount: int = Field(gt=0, le=10**12)
    over_capture_tolerance: int = Field(default=0, ge=0, le=10**12)


class ForcePost(BaseModel):
    account_id: str
    network_txn_id: str = Field(min_length=1, max_length=128)
    amount: int = Field(gt=0, le=10**12)
    currency: str
    kind: str = Field(pattern="^(debit|credit)$")
