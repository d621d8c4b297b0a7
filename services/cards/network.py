"""The card network's messages, as JSON named after ISO 8583, and the response codes we answer with.

Field names are snake_case versions of the ISO data elements they stand for:
`pan` (DE 2), `processing_code` (DE 3), `amount` (DE 4, minor units), `currency`
(DE 49, alphabetic here), `transmission_time` (DE 7), `stan` (DE 11), `expiry`
(DE 14, YYMM), `rrn` (DE 37), `approval_code` (DE 38), `response_code` (DE 39),
`merchant.mcc` (DE 18), `merchant.id` / `merchant.name` / location (DE 42, 43),
`replacement_amount` (DE 95), `network_transaction_id` (the scheme's trace id,
e.g. Mastercard's Banknet reference). A message that does not fit is refused
with HTTP 400 and a typed code, never answered with an approval.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator

from services.cards.decision import Outcome, TransactionType

MAX_AMOUNT = 10**12
MAX_BATCH = 1_000

NetworkId = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", examples=["MCC7HQ3B91126"]),
]
Amount = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT, description="minor units, e.g. 1915 for £19.15")]
Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 alphabetic code", examples=["GBP"])
]
Pan = Annotated[str, Field(pattern=r"^[0-9]{12,19}$", description="primary account number (DE 2)")]
ProcessingCode = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{6}$",
        description="DE 3: transaction type (first two digits: 00 purchase, 01 cash, 20 refund, "
        "31 balance inquiry) then from- and to-account types",
        examples=["000000"],
    ),
]
Stan = Annotated[str, Field(pattern=r"^[0-9]{6}$", description="system trace audit number (DE 11)")]
Rrn = Annotated[str, Field(pattern=r"^[0-9A-Za-z]{12}$", description="retrieval reference number (DE 37)")]
# Free text from merchants' terminals: printable only (PostgreSQL refuses NUL in text and JSONB).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class ResponseCode(StrEnum):
    """ISO 8583 field 39."""

    APPROVED = "00"
    DO_NOT_HONOUR = "05"
    INVALID_CARD = "14"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    NOT_PERMITTED = "57"
    EXCEEDS_LIMIT = "61"
    ISSUER_UNAVAILABLE = "91"
    DUPLICATE = "94"


RESPONSE_CODES: dict[Outcome, ResponseCode] = {
    Outcome.APPROVED: ResponseCode.APPROVED,
    Outcome.UNKNOWN_CARD: ResponseCode.INVALID_CARD,
    Outcome.CARD_CANCELLED: ResponseCode.INVALID_CARD,
    Outcome.CARD_EXPIRED: ResponseCode.EXPIRED_CARD,
    Outcome.EXPIRY_MISMATCH: ResponseCode.EXPIRED_CARD,
    Outcome.INVALID_CVC: ResponseCode.DO_NOT_HONOUR,
    Outcome.CARD_FROZEN: ResponseCode.DO_NOT_HONOUR,
    Outcome.ACCOUNT_CLOSED: ResponseCode.DO_NOT_HONOUR,
    Outcome.ACCOUNT_REFUSED: ResponseCode.DO_NOT_HONOUR,
    Outcome.UNSUPPORTED_TRANSACTION: ResponseCode.NOT_PERMITTED,
    Outcome.CURRENCY_NOT_SUPPORTED: ResponseCode.NOT_PERMITTED,
    Outcome.ATM_DISABLED: ResponseCode.NOT_PERMITTED,
    Outcome.MCC_BLOCKED: ResponseCode.NOT_PERMITTED,
    Outcome.PER_TRANSACTION_LIMIT: ResponseCode.EXCEEDS_LIMIT,
    Outcome.DAILY_LIMIT: ResponseCode.EXCEEDS_LIMIT,
    Outcome.INSUFFICIENT_FUNDS: ResponseCode.INSUFFICIENT_FUNDS,
    Outcome.ISSUER_UNAVAILABLE: ResponseCode.ISSUER_UNAVAILABLE,
}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Merchant(Message):
    id: str = Field(min_length=1, max_length=64, pattern=_PRINTABLE, description="card acceptor id (DE 42)")
    name: str = Field(
        min_length=1, max_length=100, pattern=_PRINTABLE, description="card acceptor name (DE 43)"
    )
    mcc: str = Field(pattern=r"^[0-9]{4}$", description="merchant category code (DE 18)", examples=["5814"])
    city: str = Field(default="", max_length=64, pattern=_PRINTABLE)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2", examples=["GB"])
    postcode: str | None = Field(default=None, max_length=16, pattern=_PRINTABLE)


class _Financial(Message):
    pan: Pan
    expiry: str = Field(pattern=r"^[0-9]{2}(0[1-9]|1[0-2])$", description="card expiry, YYMM (DE 14)")
    cvc: str | None = Field(
        default=None, pattern=r"^[0-9]{3}$", description="CVC2, when the card was not present"
    )
    processing_code: ProcessingCode
    amount: Amount
    currency: Currency
    stan: Stan
    rrn: Rrn
    transmission_time: AwareDatetime
    network_transaction_id: NetworkId
    merchant: Merchant

    @property
    def transaction(self) -> TransactionType:
        return TransactionType.of(self.processing_code)

    @model_validator(mode="after")
    def _amount_fits_the_type(self) -> _Financial:
        if self.amount == 0 and self.transaction is not TransactionType.BALANCE_INQUIRY:
            raise ValueError("amount must be above zero (only a balance inquiry carries no amount)")
        return self


class AuthorisationRequest(_Financial):
    """0100 authorisation request (0101: a repeat of one the network got no answer to)."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "mti": "0100", "pan": "5355220000000000", "expiry": "2911", "cvc": "123",
                    "processing_code": "000000", "amount": 1915, "currency": "GBP", "stan": "004211",
                    "rrn": "000000123456", "transmission_time": "2026-11-26T08:15:00Z",
                    "network_transaction_id": "MCC7HQ3B91126",
                    "merchant": {
                        "id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London",
                        "country": "GB", "postcode": "N1 3JD",
                    },
                }
            ]
        },
    )  # fmt: skip
    mti: Literal["0100", "0101"]


class AuthorisationResponse(Message):
    """0110 authorisation response."""

    mti: Literal["0110"] = "0110"
    response_code: ResponseCode
    approval_code: str | None = Field(default=None, description="DE 38, six characters, on approval")
    authorisation_id: str | None = Field(default=None, description="ours; absent for a 94 duplicate")
    network_transaction_id: str
    available_balance: int | None = Field(default=None, description="balance inquiries: DE 54")
    currency: str | None = None


class AdviceRequest(_Financial):
    """0120 authorisation advice: the network approved (or declined) in our place while we were down."""

    mti: Literal["0120", "0121"]
    response_code: str = Field(pattern=r"^[0-9A-Z]{2}$", description="the network's stand-in answer")


class AdviceResponse(Message):
    """0130: the advice is recorded (response code 00), or could not be and must be sent again (91)."""

    mti: Literal["0130"] = "0130"
    response_code: ResponseCode
    authorisation_id: str | None = None
    network_transaction_id: str


class ReversalRequest(Message):
    """0400 reversal of an authorisation, matched by its network transaction id.

    `amount` is the original amount; `replacement_amount` (DE 95), when present and above zero,
    is what the authorisation should stand at afterwards (a partial reversal)."""

    mti: Literal["0400", "0401"]
    network_transaction_id: NetworkId
    pan: Pan | None = None
    amount: Amount
    replacement_amount: Amount | None = None
    currency: Currency
    stan: Stan
    rrn: Rrn | None = None
    transmission_time: AwareDatetime

    @model_validator(mode="after")
    def _replacement_below_original(self) -> ReversalRequest:
        if self.replacement_amount is not None and self.replacement_amount >= self.amount:
            raise ValueError("replacement_amount must be below amount")
        return self

    @property
    def remaining(self) -> int:
        return self.replacement_amount or 0


class ReversalResponse(Message):
    """0410."""

    mti: Literal["0410"] = "0410"
    response_code: ResponseCode
    authorisation_id: str | None = None
    network_transaction_id: str


class Presentment(Message):
    """A first presentment (1240): the final amount of a card transaction, to settle.

    `network_transaction_id` links it to its authorisation; without one (or with one we never
    authorised) the presentment is an offline transaction and is force-posted."""

    mti: Literal["1240"] = "1240"
    presentment_id: NetworkId
    network_transaction_id: NetworkId | None = None
    pan: Pan
    processing_code: ProcessingCode
    amount: Amount
    currency: Currency
    merchant: Merchant
    rrn: Rrn | None = None

    @property
    def transaction(self) -> TransactionType:
        return TransactionType.of(self.processing_code)

    @model_validator(mode="after")
    def _positive(self) -> Presentment:
        if self.amount == 0:
            raise ValueError("amount must be above zero")
        if self.transaction not in (TransactionType.PURCHASE, TransactionType.CASH, TransactionType.REFUND):
            raise ValueError("processing_code must be a purchase (00), cash (01) or refund (20)")
        return self


class ClearingBatch(Message):
    presentments: list[Presentment] = Field(min_length=1, max_length=MAX_BATCH)


class PresentmentStatus(StrEnum):
    SETTLED = "settled"  # money moved (or, for a repeat, had moved)
    REJECTED = "rejected"  # cannot be settled here (unknown card, wrong currency): for disputes
    RETRY = "retry"  # accounts did not answer; send this presentment again


class PresentmentResult(Message):
    presentment_id: str
    status: PresentmentStatus
    outcome: str | None = Field(
        default=None,
        description="captured | force_posted | refunded | adjusted; or why it was rejected",
    )
    amount: int
    currency: str
    authorisation_id: str | None = None
    exceeds_tolerance: bool = False


class ClearingResponse(Message):
    mti: Literal["1250"] = "1250"
    results: list[PresentmentResult]
