"""Request parsing for the Mondo transactions API: strict, every bad value a typed 400."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.errors import bad_request

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
