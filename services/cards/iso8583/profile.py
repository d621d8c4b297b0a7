"""Our ISO 8583 profile: which data elements each message carries, and how they map onto the request
models and answers the JSON routes use (services/cards/network.py), so both wires reach one service.

The interface specification, with an example of each message in hex, is docs/iso8583.md.

Requests (the elements a message must carry; others are read and ignored):

* 0100/0101 authorisation, 0120/0121 advice: 2 PAN, 3 processing code, 4 amount (minor units),
  7 transmission time (MMDDhhmmss, UTC), 11 STAN, 14 expiry (YYMM), 18 MCC, 37 RRN, 42 card acceptor
  id (15, space padded), 43 name (25) + city (13) + country (2), 49 currency (ISO 4217 numeric),
  63 network transaction id; optionally 12/13 local time and date, 22 POS entry mode, 32 acquirer id,
  41 terminal id, 48 additional data (subelements: tag, length, value, two digits each; 92 is the
  CVC2). An advice also carries 39, the network's stand-in answer.
* 0400/0401 reversal: 4 the original amount, 7, 11, 49, 63 (the original's network transaction id),
  90 original data elements (its MTI, STAN, transmission time, acquirer and forwarding institution);
  optionally 2, 3, 37, 41, 42 and 95 replacement amounts (a partial reversal: the first 12 digits are
  what the authorisation stands at afterwards).
* 0800 network management: 7, 11, 70 (001 sign-on, 002 sign-off, 301 echo); a sign-on carries the
  network key in 48 tag 01.

Answers (MTI + 10) echo 2, 3, 4, 7, 11, 37, 41, 42, 49 and 63 as received (those present; 0410 also
90 and 95; 0810 echoes 7, 11 and 70), and add 39, the response code, and 38, the approval code, when
approved; a balance inquiry's approval adds 54 (the available balance).

Nothing here puts a value into an error: a `FormatError` names the data elements at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from services.cards.iso8583.codec import Message
from services.cards.network import AdviceRequest, AuthorisationRequest, ReversalRequest

AUTHORISATION_MTIS = frozenset({"0100", "0101"})
ADVICE_MTIS = frozenset({"0120", "0121"})
REVERSAL_MTIS = frozenset({"0400", "0401"})
NETWORK_MANAGEMENT_MTI = "0800"
FINANCIAL_MTIS = AUTHORISATION_MTIS | ADVICE_MTIS | REVERSAL_MTIS

SIGN_ON, SIGN_OFF, ECHO = "001", "002", "301"
NETWORK_KEY_TAG = "01"
CVC2_TAG = "92"

# Response codes of the link itself (the decisions' codes are services/cards/network.ResponseCode).
APPROVED = "00"
FORMAT_ERROR = "30"
SECURITY_VIOLATION = "63"  # a sign-on with a wrong or missing network key
ISSUER_UNAVAILABLE = "91"

_FINANCIAL = (2, 3, 4, 7, 11, 14, 18, 37, 42, 43, 49, 63)
REQUIRED: dict[str, tuple[int, ...]] = {
    **{mti: _FINANCIAL for mti in AUTHORISATION_MTIS},
    **{mti: (*_FINANCIAL, 39) for mti in ADVICE_MTIS},
    **{mti: (4, 7, 11, 49, 63, 90) for mti in REVERSAL_MTIS},
    NETWORK_MANAGEMENT_MTI: (7, 11, 70),
}
ECHOED = (2, 3, 4, 7, 11, 37, 41, 42, 49, 63)
ECHOED_BY: dict[str, tuple[int, ...]] = {
    "0110": ECHOED, "0130": ECHOED, "0410": (*ECHOED, 90, 95), "0810": (7, 11, 70),
}  # fmt: skip
# What the network matches an answer by (a format error's answer echoes at least these, if read).
MATCHING = (7, 11, 63)

# ISO 4217: numeric -> alphabetic. A code not listed is carried as XXX ("no currency"), which no card
# holds, so the message is declined 57 as a JSON message in an unsupported currency would be.
CURRENCIES = {
    "826": "GBP", "978": "EUR", "840": "USD", "036": "AUD", "124": "CAD", "756": "CHF", "208": "DKK",
    "578": "NOK", "752": "SEK", "392": "JPY", "156": "CNY", "344": "HKD", "554": "NZD", "702": "SGD",
    "710": "ZAR", "985": "PLN", "203": "CZK", "348": "HUF", "946": "RON", "949": "TRY", "356": "INR",
    "484": "MXN", "986": "BRL", "784": "AED", "682": "SAR", "376": "ILS", "410": "KRW", "764": "THB",
    "458": "MYR", "360": "IDR", "608": "PHP", "352": "ISK", "975": "BGN", "999": "XXX",
}  # fmt: skip
NUMERIC = {alpha: numeric for numeric, alpha in CURRENCIES.items()}
UNKNOWN_CURRENCY = "XXX"

# Model fields -> the data elements they come from (to name them in a format error's log line).
_ELEMENT_OF = {
    "pan": 2, "processing_code": 3, "amount": 4, "transmission_time": 7, "stan": 11, "expiry": 14,
    "rrn": 37, "currency": 49, "network_transaction_id": 63, "cvc": 48, "response_code": 39,
    "replacement_amount": 95, "merchant": 43, "mcc": 18, "id": 42, "name": 43, "city": 43, "country": 43,
}  # fmt: skip


class FormatError(ValueError):
    """The message decoded, but does not make a valid message of its type (DE 39 = 30). `elements`
    names the data elements at fault; no value is ever part of it."""

    def __init__(self, reason: str, elements: Iterable[int] = ()) -> None:
        self.elements = sorted(set(elements))
        super().__init__(f"{reason} (data elements {self.elements})" if self.elements else reason)
        self.reason = reason


def require(message: Message) -> None:
    missing = [f for f in REQUIRED.get(message.mti, ()) if f not in message.fields]
    if missing:
        raise FormatError("required data elements missing", missing)


def subelements(value: str, element: int = 48) -> dict[str, str]:
    """DE 48's subelements: tag (2 digits), length (2 digits), value; one after the other."""
    found: dict[str, str] = {}
    i = 0
    while i < len(value):
        tag, size = value[i : i + 2], value[i + 2 : i + 4]
        if len(size) < 2 or not (tag.isdigit() and tag.isascii() and size.isdigit() and size.isascii()):
            raise FormatError("a subelement's tag or length is not two digits", [element])
        end = i + 4 + int(size)
        if end > len(value) or tag in found:
            raise FormatError("a subelement runs past the element, or repeats a tag", [element])
        found[tag] = value[i + 4 : end]
        i = end
    return found


def join_subelements(values: Mapping[str, str]) -> str:
    return "".join(f"{tag}{len(value):02d}{value}" for tag, value in values.items())


def _digits(value: str, element: int) -> int:
    if not (value.isdigit() and value.isascii()):
        raise FormatError("not digits", [element])
    return int(value)


def transmission_time(value: str, now: datetime | None = None) -> datetime:
    """DE 7, MMDDhhmmss in UTC, in the year that puts it nearest to now (a message sent on 31
    December and read on 1 January is last year's)."""
    _digits(value, 7)
    now = now or datetime.now(UTC)
    month, day, hour, minute, second = (int(value[i : i + 2]) for i in range(0, 10, 2))
    candidates = []
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            candidates.append(datetime(year, month, day, hour, minute, second, tzinfo=UTC))
        except ValueError:
            continue
    if not candidates:
        raise FormatError("not a date and time", [7])
    return min(candidates, key=lambda t: abs((t - now).total_seconds()))


def format_transmission_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%m%d%H%M%S")


def currency(value: str) -> str:
    _digits(value, 49)
    return CURRENCIES.get(value, UNKNOWN_CURRENCY)


def _validate(model: type[BaseModel], doc: dict[str, Any]) -> Any:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:  # its text would hold the input (a PAN): only the locations leave
        elements = {_ELEMENT_OF.get(str(loc), 0) for err in exc.errors() for loc in err["loc"][-1:]}
        raise FormatError("not a valid message of its type", elements - {0}) from None


def _financial(message: Message) -> dict[str, Any]:
    f = message.fields
    name_location = f[43]
    doc: dict[str, Any] = {
        "mti": message.mti,
        "pan": f[2],
        "processing_code": f[3],
        "amount": _digits(f[4], 4),
        "transmission_time": transmission_time(f[7]),
        "stan": f[11],
        "expiry": f[14],
        "rrn": f[37],
        "currency": currency(f[49]),
        "network_transaction_id": f[63],
        "merchant": {
            "id": f[42].rstrip(" "),
            "name": name_location[:25].rstrip(" "),
            "city": name_location[25:38].rstrip(" "),
            "country": name_location[38:40],
            "mcc": f[18],
        },
    }
    if 48 in f and (cvc := subelements(f[48]).get(CVC2_TAG)) is not None:
        doc["cvc"] = cvc
    return doc


def authorisation(message: Message) -> AuthorisationRequest:
    require(message)
    request: AuthorisationRequest = _validate(AuthorisationRequest, _financial(message))
    return request


def advice(message: Message) -> AdviceRequest:
    require(message)
    doc = _financial(message)
    doc["response_code"] = message.fields[39]
    request: AdviceRequest = _validate(AdviceRequest, doc)
    return request


def original_data(value: str) -> dict[str, str]:
    """DE 90: the original's MTI (4), STAN (6), transmission time (10), acquiring (11) and forwarding
    (11) institution ids, all digits."""
    _digits(value, 90)
    mti = value[:4]
    if mti[:2] != "01" or mti[2] not in "02":
        raise FormatError("the original is not an authorisation or advice", [90])
    return {"mti": mti, "stan": value[4:10], "transmission_time": value[10:20],
            "acquirer": value[20:31], "forwarder": value[31:42]}  # fmt: skip


def reversal(message: Message) -> ReversalRequest:
    require(message)
    f = message.fields
    original_data(f[90])
    doc: dict[str, Any] = {
        "mti": message.mti,
        "network_transaction_id": f[63],
        "amount": _digits(f[4], 4),
        "currency": currency(f[49]),
        "stan": f[11],
        "transmission_time": transmission_time(f[7]),
    }
    if 2 in f:
        doc["pan"] = f[2]
    if 37 in f:
        doc["rrn"] = f[37]
    if 95 in f:
        doc["replacement_amount"] = _digits(f[95][:12], 95)
        _digits(f[95], 95)
    request: ReversalRequest = _validate(ReversalRequest, doc)
    return request


def additional_amount(balance: int, alpha: str | None) -> str | None:
    """DE 54, one amount: account type 00, amount type 02 (available balance), the currency (numeric),
    C or D, 12 digits."""
    numeric = NUMERIC.get(alpha or "")
    if numeric is None or abs(balance) >= 10**12:
        return None
    return f"0002{numeric}{'C' if balance >= 0 else 'D'}{abs(balance):012d}"


def answer_fields(
    request: Mapping[int, str], response_mti: str, code: str, answer: Mapping[str, Any] | None = None
) -> dict[int, str]:
    """The answer's data elements: the echoed ones of the request, 39, and 38/54 from the service's
    answer (`{"response_code", "approval_code"?, "available_balance"?, "currency"?}`)."""
    fields = {f: request[f] for f in ECHOED_BY.get(response_mti, ECHOED) if f in request}
    fields[39] = code
    if answer is not None:
        if code == APPROVED and (approval := answer.get("approval_code")):
            fields[38] = str(approval)
        if (balance := answer.get("available_balance")) is not None:
            if (amounts := additional_amount(int(balance), answer.get("currency"))) is not None:
                fields[54] = amounts
    return fields


def format_error_fields(decoded: Mapping[int, str], response_mti: str) -> dict[int, str]:
    """A format error's answer: 39 = 30, and whatever of the echo (at least 7, 11, 63) was read."""
    echoed = set(ECHOED_BY.get(response_mti, ECHOED)) | set(MATCHING)
    fields = {f: v for f, v in decoded.items() if f in echoed}
    fields[39] = FORMAT_ERROR
    return fields
