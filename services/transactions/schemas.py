"""Request parsing for the Mondo transactions API: strict, every bad value a typed 400. Also the receipt
JSON and the attachment fields (decision 0037)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from shared.errors import bad_request
from shared.money import MAX_AMOUNT

_LIMIT = re.compile(r"^[0-9]{1,6}$")
_TX_ID = re.compile(r"^tx_[0-9A-Za-z]{1,64}$")
_METADATA_KEY = re.compile(r"^metadata\[([^\[\]]{1,100})\]$")
MAX_METADATA_KEYS = 100
MAX_METADATA_VALUE = 2_000
EXPANDABLE = frozenset({"merchant"})


def parse_limit(value: str | None, *, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not _LIMIT.match(value) or not 1 <= int(value) <= maximum:
        raise bad_request("bad_param.limit", f"limit is a whole number from 1 to {maximum}", param="limit")
    return int(value)


def parse_time(value: str, param: str) -> datetime:
    """An RFC 3339 time with its offset: 2026-11-26T08:15:00Z or 2026-11-26T09:15:00+01:00."""
    text = value.strip()
    try:
        if "T" not in text.upper():
            raise ValueError("no time")
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise bad_request(
            f"bad_param.{param}",
            f"{param} must be an RFC 3339 time such as 2026-11-26T08:15:00Z",
            param=param,
        )
    return moment


@dataclass(frozen=True)
class Since:
    time: datetime | None = None
    transaction_id: str | None = None


def parse_since(value: str | None) -> Since | None:
    """`since` is an RFC 3339 time (inclusive) or a transaction id (the page starts after it)."""
    if value is None:
        return None
    if value.startswith("tx_"):
        if not _TX_ID.match(value):
            raise bad_request("bad_param.since", "since is not a transaction id", param="since")
        return Since(transaction_id=value)
    try:
        return Since(time=parse_time(value, "since"))
    except Exception:
        raise bad_request(
            "bad_param.since", "since must be an RFC 3339 time or a transaction id (tx_…)", param="since"
        ) from None


def parse_expand(values: Iterable[str]) -> bool:
    """`expand[]=merchant` (the only expandable field): True if the merchant is to be expanded."""
    wanted = set(values)
    if unknown := wanted - EXPANDABLE:
        raise bad_request(
            "bad_param.expand", f"cannot expand {', '.join(sorted(unknown))}; only merchant", param="expand[]"
        )
    return "merchant" in wanted


def parse_metadata_form(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`metadata[key]=value` pairs of a PATCH body (an empty value deletes the key)."""
    changes: dict[str, str] = {}
    for name, value in items:
        match = _METADATA_KEY.match(name)
        if match is None:
            field = name[:100]
            raise bad_request(
                "bad_param.metadata", f"unexpected field {field!r}: send metadata[key]=value", param=field
            )
        if len(value) > MAX_METADATA_VALUE:
            raise bad_request(
                "bad_param.metadata", f"{name} is longer than {MAX_METADATA_VALUE} characters", param=name
            )
        changes[match.group(1)] = value
    if not changes:
        raise bad_request("missing_param", "send at least one metadata[key]=value", param="metadata")
    if len(changes) > MAX_METADATA_KEYS:
        raise bad_request("bad_param.metadata", f"at most {MAX_METADATA_KEYS} keys at once", param="metadata")
    return changes


# Receipts (decision 0037): Monzo's receipt JSON. Amounts are integer minor units (a float is a 400),
# every list and string bounded.

_Text = Annotated[str, Field(max_length=500)]
_Short = Annotated[str, Field(max_length=100)]
_Amount = Annotated[StrictInt, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
_Quantity = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ReceiptSubItem(_Part):
    description: _Text
    amount: _Amount
    currency: str
    quantity: _Quantity = 1
    unit: _Short = ""
    tax: _Amount = 0


class ReceiptItem(ReceiptSubItem):
    sub_items: list[ReceiptSubItem] = Field(default_factory=list, max_length=50)


class ReceiptTax(_Part):
    description: _Text
    amount: _Amount
    currency: str
    tax_number: _Short = ""


class ReceiptPayment(_Part):
    type: _Short
    amount: _Amount
    currency: str
    bin: _Short = ""
    last_four: _Short = ""
    auth_code: _Short = ""
    aid: _Short = ""
    merchant_id: _Short = ""
    terminal_id: _Short = ""
    name: _Short = ""
    email: _Short = ""
    gift_card_type: _Short = ""


class ReceiptMerchant(_Part):
    name: _Text = ""
    online: bool = False
    phone: _Short = ""
    email: _Short = ""
    store_name: _Text = ""
    store_address: _Text = ""
    store_postcode: _Short = ""


class ReceiptIn(_Part):
    """PUT /transaction-receipts."""

    transaction_id: Annotated[str, Field(min_length=1, max_length=128)]
    external_id: Annotated[str, Field(min_length=1, max_length=255)]
    total: _Amount
    currency: str
    items: list[ReceiptItem] = Field(default_factory=list, max_length=200)
    taxes: list[ReceiptTax] = Field(default_factory=list, max_length=50)
    payments: list[ReceiptPayment] = Field(default_factory=list, max_length=50)
    merchant: ReceiptMerchant | None = None

    def currencies(self) -> list[tuple[str, str]]:
        """(where, currency) of every money figure, for the caller to check."""
        found = [("currency", self.currency)]
        for i, item in enumerate(self.items):
            found.append((f"items.{i}.currency", item.currency))
            found += [(f"items.{i}.sub_items.{j}.currency", s.currency) for j, s in enumerate(item.sub_items)]
        found += [(f"taxes.{i}.currency", t.currency) for i, t in enumerate(self.taxes)]
        found += [(f"payments.{i}.currency", p.currency) for i, p in enumerate(self.payments)]
        return found

    @property
    def items_total(self) -> int:
        return sum(item.amount for item in self.items)


# Attachments -----------------------------------------------------------------------------------------

_FILE_NAME = re.compile(r"^[^\x00-\x1f\x7f/\\]{1,255}$")


def parse_file_name(value: str) -> str:
    if not _FILE_NAME.match(value) or not value.strip():
        raise bad_request(
            "bad_param.file_name", "file_name is 1-255 characters, no slashes or control characters",
            param="file_name",
        )  # fmt: skip
    return value


def parse_content_length(value: str, maximum: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value):
        raise bad_request(
            "bad_param.content_length", "content_length is a number of bytes", param="content_length"
        )
    length = int(value)
    if not 0 < length <= maximum:
        raise bad_request(
            "bad_param.content_length", f"a file is 1 to {maximum} bytes (10 MB)", param="content_length"
        )
    return length
