"""The feed's rules, pure: which transaction an event belongs to, the fold of a transaction's events
into what the feed shows, what it adds to spend today, and which local day it counts in.

Order independence: `fold` sees the *set* of a transaction's events (duplicates removed by event id)
and every rule is a function of that set (sums over distinct presentments, the minimum remaining
amount over reversals, the earliest time…), never of arrival order. So events arriving late, twice or
out of order converge to the same transaction. No database, no web framework in here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from services.transactions.events import (
    APPROVED,
    DECLINED,
    PAYMENT_SENT,
    PAYMENT_TYPES,
    POT_TYPES,
    REFUND_SETTLED,
    REVERSED,
    SETTLED,
    TOPUP_COMPLETED,
    CardEvent,
    Change,
    Kind,
    NetworkMerchant,
    PaymentMoved,
    PotMoved,
    TopupCompleted,
)
from shared.spend_day import spend_day as spend_day

# Money-moving card transactions: purchases (00) and cash (01). Refund authorisations (20) move no
# money (the credit arrives with its clearing, its own transaction); balance enquiries (30, 31) neither.
SPENDING_CODES = ("00", "01")


@dataclass(frozen=True, slots=True)
class Fact:
    """One event as the fold sees it."""

    event_id: str
    type: str
    time: datetime
    data: Mapping[str, Any]


@dataclass(frozen=True)
class FeedItem:
    """What the feed shows of one transaction, before owner, balance and annotations."""

    key: str
    account_id: str
    kind: Kind
    amount: int  # minor units, negative = debit
    currency: str
    created: datetime
    updated: datetime
    settled: datetime | None = None
    declined: bool = False
    decline_reason: str | None = None
    reversed: bool = False
    description: str = ""
    merchant: NetworkMerchant | None = None
    card_last4: str = ""
    network_transaction_id: str | None = None
    balance_refs: tuple[str, ...] = field(default=())
    # Money between the bank's own accounts (decision 0037): the other customer of a payment, and what
    # the transaction's metadata always carries (a pot's id, a payment's id and reference).
    counterparty: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.settled is None and not self.declined and not self.reversed

    def to_json(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies every value (the merchant model,
        # each datetime), and this runs for every event the feed folds.
        return {
            "key": self.key,
            "account_id": self.account_id,
            "kind": self.kind,
            "amount": self.amount,
            "currency": self.currency,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
            "settled": self.settled.isoformat() if self.settled else None,
            "declined": self.declined,
            "decline_reason": self.decline_reason,
            "reversed": self.reversed,
            "description": self.description,
            "merchant": self.merchant.model_dump() if self.merchant else None,
            "card_last4": self.card_last4,
            "network_transaction_id": self.network_transaction_id,
            "balance_refs": list(self.balance_refs),
            "counterparty": dict(self.counterparty),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FeedItem:
        values = dict(doc)
        values["created"] = datetime.fromisoformat(values["created"])
        values["updated"] = datetime.fromisoformat(values["updated"])
        values["settled"] = datetime.fromisoformat(values["settled"]) if values.get("settled") else None
        merchant = values["merchant"]
        values["merchant"] = NetworkMerchant.model_validate(merchant) if merchant else None
        values["balance_refs"] = tuple(values["balance_refs"])
        return cls(**values)


def source_key(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The transaction an event belongs to (None: the event makes no feed item)."""
    if event_type == TOPUP_COMPLETED:
        return f"topup:{TopupCompleted.model_validate(data).topup_id}"
    if event_type in POT_TYPES:
        return f"pot:{PotMoved.model_validate(data).transfer_id}"
    if event_type in PAYMENT_TYPES:  # one transaction on each side of a payment
        side = "sent" if event_type == PAYMENT_SENT else "received"
        return f"p2p:{PaymentMoved.model_validate(data).payment_id}:{side}"
    card = CardEvent.model_validate(data)
    if event_type == REFUND_SETTLED:
        return f"refund:{card.presentment_id}" if card.presentment_id else None
    if card.processing_code[:2] not in SPENDING_CODES:
        return None
    if card.authorisation_id:
        return f"auth:{card.authorisation_id}"  # one transaction per authorisation
    if event_type == SETTLED and card.presentment_id:
        return f"presentment:{card.presentment_id}"  # offline: cleared with no authorisation
    return None


def event_refs(event_type: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    """The ledger references one event can give its transaction (a superset of what `fold` keeps in
    `balance_refs`: the fold's base event and presentments are among the transaction's events)."""
    if event_type == TOPUP_COMPLETED:
        return (TopupCompleted.model_validate(data).topup_id,)
    if event_type in POT_TYPES:
        return (PotMoved.model_validate(data).transfer_id,)
    if event_type in PAYMENT_TYPES:
        return (PaymentMoved.model_validate(data).payment_id,)
    card = CardEvent.model_validate(data)
    refs: list[str] = []
    if card.network_transaction_id:
        refs += [card.network_transaction_id, f"advice:{card.network_transaction_id}"]
    if card.presentment_id and event_type in (SETTLED, REFUND_SETTLED):
        refs.append(f"presentment:{card.presentment_id}")
    return tuple(refs)


def descriptor(merchant: NetworkMerchant) -> str:
    """The statement line as the network prints it: "BRIGHTBIRD ESPRESSO LONDON GBR"."""
    words = " ".join(merchant.name.split()).upper()
    for part in (merchant.city, merchant.country):
        part = " ".join(part.split()).upper()
        if part and not words.endswith(" " + part) and f" {part} " not in f" {words} ":
            words = f"{words} {part}"
    return words


def fold(facts: Iterable[Fact]) -> FeedItem | None:
    """The transaction these events describe, whatever order they came in."""
    unique = {f.event_id: f for f in facts}
    ordered = sorted(unique.values(), key=lambda f: (f.time, f.event_id))
    if not ordered:
        return None
    first = ordered[0]
    created = first.time
    updated = max(f.time for f in ordered)
    if first.type == TOPUP_COMPLETED:
        topup = TopupCompleted.model_validate(first.data)
        return FeedItem(
            key=f"topup:{topup.topup_id}", account_id=topup.account_id, kind="topup", amount=topup.amount,
            currency=topup.currency, created=created, updated=updated, settled=created,
            description="Top up", balance_refs=(topup.topup_id,),
        )  # fmt: skip
    if first.type in POT_TYPES:
        pot = PotMoved.model_validate(first.data)
        return FeedItem(
            key=f"pot:{pot.transfer_id}", account_id=pot.account_id, kind="pot_transfer", amount=pot.amount,
            currency=pot.currency, created=created, updated=updated, settled=created, description=pot.pot_id,
            balance_refs=(pot.transfer_id,),
            metadata={"pot_id": pot.pot_id, "pot_name": pot.pot_name, "trigger": "user"},
        )  # fmt: skip
    if first.type in PAYMENT_TYPES:
        paid = PaymentMoved.model_validate(first.data)
        side = "sent" if first.type == PAYMENT_SENT else "received"
        return FeedItem(
            key=f"p2p:{paid.payment_id}:{side}", account_id=paid.account_id, kind="p2p_payment",
            amount=paid.amount, currency=paid.currency, created=created, updated=updated, settled=created,
            description=paid.reference or paid.counterparty_name, balance_refs=(paid.payment_id,),
            counterparty={"user_id": paid.counterparty_user_id, "name": paid.counterparty_name},
            metadata={"p2p_transfer_id": paid.payment_id, "p2p_reference": paid.reference},
        )  # fmt: skip
    cards = [(f, CardEvent.model_validate(f.data)) for f in ordered]
    by_type: dict[str, list[tuple[Fact, CardEvent]]] = {}
    for fact, card in cards:
        by_type.setdefault(fact.type, []).append((fact, card))
    preference = (APPROVED, DECLINED, REVERSED, SETTLED, REFUND_SETTLED)
    base = next(by_type[t][0][1] for t in preference if t in by_type)
    presentments = {
        c.presentment_id: (f, c)
        for t in (SETTLED, REFUND_SETTLED)
        for f, c in by_type.get(t, [])
        if c.presentment_id
    }
    refs = set()
    if base.network_transaction_id:
        refs.update({base.network_transaction_id, f"advice:{base.network_transaction_id}"})
    refs.update(f"presentment:{pid}" for pid in presentments)
    common: dict[str, Any] = {
        "account_id": base.account_id, "currency": base.currency, "created": created, "updated": updated,
        "description": descriptor(base.merchant), "merchant": base.merchant, "card_last4": base.card_last4,
        "network_transaction_id": base.network_transaction_id, "balance_refs": tuple(sorted(refs)),
    }  # fmt: skip
    settled_at = min((f.time for f, _ in presentments.values()), default=None)
    settled_total = sum(c.amount for _, c in presentments.values())
    if REFUND_SETTLED in by_type:
        key = _key(base, "refund")
        return FeedItem(key=key, kind="refund", amount=settled_total, settled=settled_at, **common)
    kind: Kind = "atm_withdrawal" if base.processing_code.startswith("01") else "card_payment"
    key = _key(base, "card")
    if presentments:
        return FeedItem(key=key, kind=kind, amount=-settled_total, settled=settled_at, **common)
    live = by_type.get(APPROVED, []) + by_type.get(REVERSED, [])
    if live:
        authorised = live[0][1].amount
        reversals = by_type.get(REVERSED, [])
        remainders = [c.remaining_amount for _, c in reversals if c.remaining_amount is not None]
        remaining = min(remainders, default=authorised)
        remaining = max(0, min(remaining, authorised))
        return FeedItem(key=key, kind=kind, amount=-remaining, reversed=remaining == 0, **common)
    return FeedItem(
        key=key, kind=kind, amount=-base.amount, declined=True, decline_reason=base.decline_reason or "OTHER",
        **common,
    )  # fmt: skip


def _key(card: CardEvent, kind: str) -> str:
    if kind == "refund":
        return f"refund:{card.presentment_id}"
    if card.authorisation_id:
        return f"auth:{card.authorisation_id}"
    return f"presentment:{card.presentment_id}"


# -- spend today --------------------------------------------------------------------------------------


def spend_of(item: FeedItem) -> int:
    """What the transaction adds to its day's spend: card payments and cash count, refunds reduce it,
    declines, reversals, top-ups, pot moves and payments between customers add nothing."""
    if item.kind in ("topup", "pot_transfer", "p2p_payment") or item.declined:
        return 0
    return -item.amount


def spend_moves(old: tuple[date, int] | None, new: tuple[date, int]) -> dict[date, int]:
    """How a transaction's (day, share) moving from `old` to `new` changes the days' running totals
    (net per day, zero moves dropped)."""
    moves: dict[date, int] = {}
    if old is not None:
        moves[old[0]] = -old[1]
    moves[new[0]] = moves.get(new[0], 0) + new[1]
    return {day: delta for day, delta in moves.items() if delta}


# -- account_balance ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Movement:
    """One ledger movement of an account: the available balance after it, and the reference it moved."""

    time: datetime
    event_id: str
    ref: str
    available: int


def balance_after(
    refs: Collection[str], created: datetime, movements: Sequence[Movement]
) -> tuple[int | None, bool]:
    """(available balance, matched): after the transaction's own first movement (one carrying one of its
    `refs`) if there is one, else after the account's last movement at or before `created`.

    `movements` must hold, of the account's movements, at least the transaction's own and the last one at
    or before `created`; any others are harmless."""
    own = min((m for m in movements if m.ref in refs), key=_moment, default=None)
    if own is not None:
        return own.available, True
    before = max((m for m in movements if m.time <= created), key=_moment, default=None)
    return (before.available if before is not None else None), False


def _moment(m: Movement) -> tuple[datetime, str]:
    return m.time, m.event_id


# -- changes -------------------------------------------------------------------------------------------


def change_of(old: FeedItem | None, new: FeedItem) -> Change:
    """How a new fold of a transaction differs from the one before, in docs/events.md's terms.

    A change that is none of settled/reversed (a late detail: the authorisation arriving after its
    clearing, a balance figure) names the lifecycle state the transaction is in.
    """
    if old is None:
        return "created"
    if new.settled is not None and (old.settled is None or old.amount != new.amount):
        return "settled"
    if new.reversed != old.reversed or (new.pending and old.pending and new.amount != old.amount):
        return "reversed"
    if new.settled is not None:
        return "settled"
    return "reversed" if new.reversed else "created"
