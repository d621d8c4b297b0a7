"""Card holders' JSON shapes and form parsing (Mondo conventions: form-encoded in, RFC 3339 out)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from services.cards.decision import Controls
from services.cards.models import Card
from services.cards.vault import Expiry
from shared.errors import bad_request
from shared.money import parse_amount

_MCC = re.compile(r"^[0-9]{4}$")
MAX_BLOCKED_MCCS = 200


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expiry_of(card: Card) -> Expiry:
    return Expiry(card.expiry_month, card.expiry_year)


def controls_of(card: Card) -> Controls:
    return Controls(
        per_transaction_limit=card.per_transaction_limit,
        daily_limit=card.daily_limit,
        blocked_mccs=frozenset(card.blocked_mccs or ()),
        atm_enabled=card.atm_enabled,
    )


def controls_json(card: Card) -> dict[str, Any]:
    return {
        "spend_limit_per_transaction": card.per_transaction_limit,
        "spend_limit_per_day": card.daily_limit,
        "blocked_mccs": sorted(card.blocked_mccs or ()),
        "atm_enabled": card.atm_enabled,
    }


def card_json(card: Card) -> dict[str, Any]:
    return {
        "id": card.id,
        "account_id": card.account_id,
        "status": card.status,
        "last4": card.last4,
        "expiry": expiry_of(card).mm_yy,
        "created": rfc3339(card.created),
        "controls": controls_json(card),
    }


def issued_card_json(card: Card, pan: str, cvc: str) -> dict[str, Any]:
    """The one response that carries the PAN and CVC (the issue's exact shape)."""
    return {
        "card": {
            "id": card.id,
            "account_id": card.account_id,
            "status": card.status,
            "last4": card.last4,
            "expiry": expiry_of(card).mm_yy,
            "pan": pan,
            "cvc": cvc,
            "created": rfc3339(card.created),
        }
    }


def parse_limit(value: str, param: str) -> int | None:
    """An amount in minor units; an empty value removes the limit."""
    if value.strip() == "":
        return None
    return parse_amount(value, param=param, allow_zero=True)


def parse_mccs(value: str) -> list[str]:
    """A comma-separated list of merchant category codes; empty clears it."""
    codes = sorted({c.strip() for c in value.split(",") if c.strip()})
    if any(not _MCC.match(c) for c in codes):
        raise bad_request(
            "bad_param.blocked_mccs",
            "blocked_mccs is a comma-separated list of 4-digit MCCs",
            param="blocked_mccs",
        )
    if len(codes) > MAX_BLOCKED_MCCS:
        raise bad_request("bad_param.blocked_mccs", f"at most {MAX_BLOCKED_MCCS} MCCs", param="blocked_mccs")
    return codes


def parse_bool(value: str, param: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "on", "yes"):
        return True
    if lowered in ("false", "0", "off", "no"):
        return False
    raise bad_request(f"bad_param.{param}", f"{param} is true or false", param=param)
