"""Money as integer minor units plus an ISO 4217 currency. Never floats.

Parsing is strict: external input is a string of ASCII digits (optionally a
leading minus where allowed). "1.5", "1e3", "NaN", "", " 1" and booleans are
rejected with a typed 4xx error rather than coerced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import bad_request

# ISO 4217 code -> number of minor-unit digits. The currencies a UK prepaid card sees in practice.
CURRENCIES: dict[str, int] = {
    "GBP": 2, "EUR": 2, "USD": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2,
    "DKK": 2, "PLN": 2, "CZK": 2, "HUF": 2, "RON": 2, "TRY": 2, "ZAR": 2, "HKD": 2, "SGD": 2,
    "CNY": 2, "INR": 2, "MXN": 2, "BRL": 2, "AED": 2, "THB": 2, "ILS": 2,
    "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0,
    "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip

SYMBOLS: dict[str, str] = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥", "CHF": "CHF ", "INR": "₹"}

# Far above any real card payment, far below int64: a guard against absurd input.
MAX_AMOUNT = 10**12

_INT_RE = re.compile(r"^-?[0-9]{1,15}$")


@dataclass(frozen=True, slots=True)
class Money:
    amount: int  # minor units, e.g. pence
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise TypeError("Money.amount must be an int of minor units")
        if self.currency not in CURRENCIES:
            raise ValueError(f"unknown currency {self.currency!r}")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot mix {self.currency} and {other.currency}")

    def format(self) -> str:
        return format_amount(self.amount, self.currency)


def parse_currency(value: object, *, param: str = "currency") -> str:
    if not isinstance(value, str) or value.upper() != value or value not in CURRENCIES:
        raise bad_request(
            "bad_param.currency", f"{param} must be an ISO 4217 currency code we support", param=param
        )
    return value


def parse_amount(
    value: object, *, param: str = "amount", allow_negative: bool = False, allow_zero: bool = False
) -> int:
    """Parse an amount in minor units from request input (str or int, never float or bool)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise bad_request(
            "bad_param.amount", f"{param} must be an integer number of minor units", param=param
        )
    if isinstance(value, str):
        if not _INT_RE.match(value):
            raise bad_request(
                "bad_param.amount",
                f"{param} must be an integer number of minor units, e.g. 1915 for £19.15",
                param=param,
            )
        value = int(value)
    if abs(value) > MAX_AMOUNT:
        raise bad_request("bad_param.amount", f"{param} is too large", param=param)
    if value < 0 and not allow_negative:
        raise bad_request("bad_param.amount", f"{param} must not be negative", param=param)
    if value == 0 and not allow_zero:
        raise bad_request("bad_param.amount", f"{param} must not be zero", param=param)
    return value


def format_amount(amount: int, currency: str) -> str:
    """£19.15, -€3.00, ¥500: for people (notifications, logs), never for machines."""
    digits = CURRENCIES[currency]
    sign = "-" if amount < 0 else ""
    units, minor = divmod(abs(amount), 10**digits)
    symbol = SYMBOLS.get(currency, currency + " ")
    body = f"{units:,}" if digits == 0 else f"{units:,}.{minor:0{digits}d}"
    return f"{sign}{symbol}{body}"
