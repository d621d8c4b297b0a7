"""Builders of the events transactions consumes, as accounts and cards publish them (same fields)."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events.envelope import Envelope

T0 = datetime(2026, 11, 26, 8, 15, tzinfo=UTC)
_seq = itertools.count(1)


def at(minutes: float = 0, base: datetime = T0) -> datetime:
    return base + timedelta(minutes=minutes)


def envelope(source: str, event_type: str, account_id: str, data: dict[str, Any], time: datetime) -> Envelope:
    return Envelope(
        id=str(uuid.uuid4()),
        source=f"/services/{source}",
        type=event_type,
        time=time,
        subject=account_id,
        data={"account_id": account_id, **data},
    )


def merchant(
    name: str = "BRIGHTBIRD ESPRESSO", mcc: str = "5814", city: str = "London", mid: str = "BB0001"
) -> dict[str, Any]:
    return {"id": mid, "name": name, "mcc": mcc, "city": city, "country": "GB", "postcode": "N1 3JD"}


def account_created(account_id: str, user_id: str, time: datetime = T0) -> Envelope:
    data = {"user_id": user_id, "currency": "GBP", "description": "Ada's account"}
    return envelope("accounts", "account.created", account_id, data, time)


def topup(account_id: str, amount: int, available: int, time: datetime = T0, topup_id: str = "") -> Envelope:
    data = {
        "amount": amount, "currency": "GBP", "balance": available, "available": available,
        "topup_id": topup_id or f"topup_{next(_seq):08d}", "entry_id": f"je_{next(_seq)}",
    }  # fmt: skip
    return envelope("accounts", "account.topup.completed", account_id, data, time)


def hold_placed(account_id: str, nid: str, amount: int, available: int, time: datetime) -> Envelope:
    data = {
        "amount": -amount, "currency": "GBP", "balance": available + amount, "available": available,
        "hold_id": f"hold_{next(_seq)}", "network_txn_id": nid,
    }  # fmt: skip
    return envelope("accounts", "account.hold.placed", account_id, data, time)


def posted(account_id: str, ref: str, amount: int, available: int, time: datetime) -> Envelope:
    data = {
        "amount": amount, "currency": "GBP", "balance": available, "available": available,
        "entry_id": f"je_{next(_seq)}", "network_txn_id": ref,
        "kind": "credit" if amount > 0 else "force_debit",
    }  # fmt: skip
    return envelope("accounts", "account.posted", account_id, data, time)


class Authorisation:
    """One authorisation and the events the cards service publishes about it."""

    def __init__(
        self, account_id: str, amount: int = 1_915, merchant_data: dict[str, Any] | None = None,
        processing_code: str = "000000",
    ) -> None:  # fmt: skip
        n = next(_seq)
        self.account_id = account_id
        self.amount = amount
        self.id = f"auth_{n:010d}"
        self.nid = f"NTX{n:08d}"
        self.merchant = merchant_data or merchant()
        self.processing_code = processing_code

    def _fields(self) -> dict[str, Any]:
        return {
            "card_id": "card_1", "card_last4": "4242", "amount": self.amount, "currency": "GBP",
            "merchant": self.merchant, "network_transaction_id": self.nid,
            "processing_code": self.processing_code, "authorisation_id": self.id, "stan": "000001",
            "rrn": "000000000001",
        }  # fmt: skip

    def approved(self, time: datetime = T0) -> Envelope:
        data = {**self._fields(), "response_code": "00", "approval_code": "A1B2C3",
                "held_amount": self.amount, "stand_in": False}  # fmt: skip
        return envelope("cards", "card.authorisation.approved", self.account_id, data, time)

    def declined(self, time: datetime = T0, reason: str = "INSUFFICIENT_FUNDS") -> Envelope:
        data = {**self._fields(), "response_code": "51", "decline_reason": reason,
                "decline_detail": "insufficient_funds"}  # fmt: skip
        return envelope("cards", "card.authorisation.declined", self.account_id, data, time)

    def reversed(self, remaining: int, time: datetime = T0) -> Envelope:
        data = {**self._fields(), "response_code": "00", "reversed_amount": self.amount - remaining,
                "remaining_amount": remaining}  # fmt: skip
        return envelope("cards", "card.authorisation.reversed", self.account_id, data, time)

    def settled(self, amount: int | None = None, time: datetime = T0, presentment_id: str = "") -> Envelope:
        fields = self._fields()
        for name in ("stan", "rrn"):
            fields.pop(name)
        data = {
            **fields, "amount": self.amount if amount is None else amount,
            "presentment_id": presentment_id or f"P{next(_seq):08d}", "authorised_amount": self.amount,
            "forced": False, "exceeds_tolerance": False,
        }  # fmt: skip
        return envelope("cards", "card.transaction.settled", self.account_id, data, time)

    def hold(self, available: int, time: datetime) -> Envelope:
        return hold_placed(self.account_id, self.nid, self.amount, available, time)


def offline_settlement(account_id: str, amount: int, presentment_id: str, time: datetime) -> Envelope:
    data = {
        "card_id": "card_1", "card_last4": "4242", "amount": amount, "currency": "GBP",
        "merchant": merchant(),
        "network_transaction_id": None, "processing_code": "000000", "presentment_id": presentment_id,
        "authorisation_id": None, "authorised_amount": None, "forced": True, "exceeds_tolerance": False,
    }  # fmt: skip
    return envelope("cards", "card.transaction.settled", account_id, data, time)


def refund(account_id: str, amount: int, presentment_id: str, time: datetime) -> Envelope:
    data = {
        "card_id": "card_1", "card_last4": "4242", "amount": amount, "currency": "GBP",
        "merchant": merchant("FLOWER SHOP LTD", "5992"), "network_transaction_id": None,
        "processing_code": "200000", "presentment_id": presentment_id, "authorisation_id": None,
    }  # fmt: skip
    return envelope("cards", "card.refund.settled", account_id, data, time)


def pot_moved(
    account_id: str, pot_id: str, amount: int, available: int, time: datetime, transfer_id: str = ""
) -> Envelope:
    """account.pot.deposited (amount < 0: money into the pot) or account.pot.withdrawn (amount > 0)."""
    data = {
        "amount": amount, "currency": "GBP", "balance": available, "available": available, "pot_id": pot_id,
        "pot_name": "Holiday", "pot_balance": -amount if amount < 0 else 0,
        "transfer_id": transfer_id or f"potmove_{next(_seq):08d}", "entry_id": f"je_{next(_seq)}",
    }  # fmt: skip
    kind = "account.pot.deposited" if amount < 0 else "account.pot.withdrawn"
    return envelope("accounts", kind, account_id, data, time)


def payment(
    sender: tuple[str, str, str], receiver: tuple[str, str, str], amount: int, available: tuple[int, int],
    time: datetime, reference: str = "pizza", payment_id: str = "",
) -> tuple[Envelope, Envelope]:  # fmt: skip
    """account.payment.sent and account.payment.received; each side is (account, user, name)."""
    pid = payment_id or f"p2p_{next(_seq):08d}"
    common = {"currency": "GBP", "payment_id": pid, "entry_id": f"je_{next(_seq)}", "reference": reference}
    sent = {
        **common, "amount": -amount, "balance": available[0], "available": available[0],
        "counterparty_account_id": receiver[0], "counterparty_user_id": receiver[1],
        "counterparty_name": receiver[2],
    }  # fmt: skip
    received = {
        **common, "amount": amount, "balance": available[1], "available": available[1],
        "counterparty_account_id": sender[0], "counterparty_user_id": sender[1],
        "counterparty_name": sender[2],
    }  # fmt: skip
    return (
        envelope("accounts", "account.payment.sent", sender[0], sent, time),
        envelope("accounts", "account.payment.received", receiver[0], received, time),
    )
