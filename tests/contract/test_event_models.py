"""Producers' event models against their consumers' copies (docs/events.md).

A service never imports another: each consumer declares its own pydantic model of the fields it
reads of another service's events. Nothing compared them until this test. For each consumer copy
and every producer model it reads, an event is built from the producer's model (once with every
optional field filled, once with each left at None or its default), put on the wire as the outbox
puts it (`Envelope.wrap`), and read back with the consumer's model as the consumer reads it:

* it must validate (every field the consumer requires is there, with a type it accepts);
* every field the consumer reads must come out as the producer sent it (the same value and type,
  not a default, not a coercion), and must be one that at least one of its producers sends;
* the topics both sides name are the one list in shared/topics.py, and every event type a
  consumer dispatches on is one a producer's model declares.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

import pytest
from pydantic import BaseModel

from services.accounts import events as accounts
from services.cards import events as cards
from services.notifications import consumers as notifications
from services.transactions import events as transactions
from services.webhooks import events as webhooks
from shared import topics
from shared.events.envelope import Envelope, EventData

LEDGER_MONEY = (
    accounts.TopupCompleted, accounts.HoldPlaced, accounts.AccountPosted, accounts.PotDeposited,
    accounts.PotWithdrawn, accounts.PaymentSent, accounts.PaymentReceived,
)  # fmt: skip
CARD_EVENTS = (
    cards.AuthorisationApproved, cards.AuthorisationDeclined, cards.AuthorisationReversed,
    cards.TransactionSettled, cards.RefundSettled,
)  # fmt: skip
FEED_EVENTS = (transactions.TransactionCreated, transactions.TransactionUpdated)

# consumer's copy -> the producer models whose events it reads
COPIES: dict[type[BaseModel], tuple[type[EventData], ...]] = {
    transactions.AccountCreated: (accounts.AccountCreated,),
    transactions.LedgerMovement: LEDGER_MONEY,
    transactions.TopupCompleted: (accounts.TopupCompleted,),
    transactions.PotMoved: (accounts.PotDeposited, accounts.PotWithdrawn),
    transactions.PaymentMoved: (accounts.PaymentSent, accounts.PaymentReceived),
    transactions.CardEvent: CARD_EVENTS,
    webhooks.TransactionEvent: FEED_EVENTS,
    notifications.TransactionEvent: FEED_EVENTS,
    notifications.WebhookDisabled: (webhooks.WebhookEndpointDisabled,),
}

# Every event type a consumer dispatches on, by the consumer's own constants.
CONSUMED_TYPES = {
    "transactions": {
        transactions.ACCOUNT_CREATED, transactions.HOLD_PLACED, transactions.ACCOUNT_POSTED,
        transactions.TOPUP_COMPLETED, *transactions.CARD_TYPES, *transactions.TRANSFER_TYPES,
    },
    "webhooks": set(webhooks.DELIVERED_TYPES),
    "notifications": {*notifications.TRANSACTION_TYPES, notifications.WEBHOOK_DISABLED},
}  # fmt: skip

PRODUCERS = {"accounts": accounts, "cards": cards, "transactions": transactions, "webhooks": webhooks}


def _event_models(module: types.ModuleType) -> Iterator[type[EventData]]:
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, EventData) and "event_type" in vars(value):
            yield value


PRODUCED_TYPES = {m.event_type for module in PRODUCERS.values() for m in _event_models(module)}


# -- building an event from a producer's model ------------------------------------------------------


def _sample(annotation: Any, name: str, full: bool) -> Any:
    """A value of `annotation`, distinct per field name; `full=False` picks None where allowed."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if not full and type(None) in args:
            return None
        return _sample(next(a for a in args if a is not type(None)), name, full)
    if origin is Literal:
        return args[-1]
    if origin is dict:
        return {"key": f"{name}-value", "n": 3}
    if origin is list:
        return [_sample(args[0], name, full)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _build(annotation, full)
    samples: dict[Any, Any] = {str: f"{name}-sample", int: 1000 + len(name), bool: True, float: 1.5}
    if annotation not in samples:
        raise TypeError(f"no sample for {name}: {annotation!r} (teach _sample this type)")
    return samples[annotation]


def _build(model: type[BaseModel], full: bool) -> BaseModel:
    hints = typing.get_type_hints(model)
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if full or field.is_required():
            values[name] = _sample(hints[name], name, full)
    return model(**values)


def _wire(model: type[EventData], full: bool) -> dict[str, Any]:
    """The event's `data` as a consumer receives it: through the envelope's JSON."""
    envelope = Envelope.wrap(model.__module__.split(".")[1], "acc_contract", _build(model, full))  # type: ignore[arg-type]
    return Envelope.from_json(envelope.to_json()).data


def _read(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _same(sent: Any, read: Any) -> bool:
    if isinstance(sent, dict) and isinstance(read, dict):
        return all(k in sent and _same(sent[k], v) for k, v in read.items())
    return type(sent) is type(read) and sent == read


# -- the contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("copy", "producer"),
    [(copy, producer) for copy, producers in COPIES.items() for producer in producers],
    ids=lambda m: f"{m.__module__.split('.')[1]}.{m.__name__}",
)
@pytest.mark.parametrize("full", [True, False], ids=["every-field", "required-only"])
def test_a_consumers_copy_reads_what_the_producer_sends(
    copy: type[BaseModel], producer: type[EventData], full: bool
) -> None:
    data = _wire(producer, full)
    read = copy.model_validate(data)
    for name, field in copy.model_fields.items():
        wire_name = field.alias or name
        if wire_name not in data:
            assert not field.is_required(), (
                f"{copy.__name__}.{name} is required; {producer.__name__} lacks it"
            )
            continue
        value = _read(getattr(read, name))
        assert _same(data[wire_name], value), (
            f"{copy.__name__}.{name} reads {value!r} where {producer.__name__} sent {data[wire_name]!r}"
        )


@pytest.mark.parametrize("copy", list(COPIES), ids=lambda m: f"{m.__module__.split('.')[1]}.{m.__name__}")
def test_every_field_a_consumer_reads_is_sent_by_a_producer(copy: type[BaseModel]) -> None:
    sent = set().union(*(_wire(producer, True) for producer in COPIES[copy]))
    read = {field.alias or name for name, field in copy.model_fields.items()}
    assert read <= sent, f"{copy.__name__} reads fields no producer sends: {sorted(read - sent)}"


def test_nested_copies_match_the_producers_nested_models() -> None:
    """The merchant a card event carries, field by field (CardEvent reads it as NetworkMerchant)."""
    sent = _build(cards.MerchantData, True).model_dump(mode="json")
    read = transactions.NetworkMerchant.model_validate(sent)
    assert read.model_dump() == {k: sent[k] for k in transactions.NetworkMerchant.model_fields}


def test_every_type_a_consumer_dispatches_on_is_produced() -> None:
    for consumer, consumed in CONSUMED_TYPES.items():
        assert consumed <= PRODUCED_TYPES, (
            f"{consumer} handles types nobody produces: {consumed - PRODUCED_TYPES}"
        )


def test_both_sides_name_topics_from_the_one_list() -> None:
    assert (accounts.ACCOUNTS_TOPIC, accounts.LEDGER_TOPIC) == (topics.ACCOUNTS, topics.LEDGER)
    assert cards.AUTHORISATIONS_TOPIC == topics.CARD_AUTHORISATIONS
    assert transactions.FEED_TOPIC == topics.TRANSACTIONS_FEED
    assert webhooks.TOPIC == topics.WEBHOOK_ENDPOINTS
    # consumers
    reads = {transactions.ACCOUNTS_TOPIC, transactions.LEDGER_TOPIC, transactions.CARDS_TOPIC}
    assert reads == {topics.ACCOUNTS, topics.LEDGER, topics.CARD_AUTHORISATIONS}
    assert webhooks.FEED_TOPIC == topics.TRANSACTIONS_FEED
    assert notifications.TRANSACTIONS_TOPIC == topics.TRANSACTIONS_FEED
    assert notifications.WEBHOOKS_TOPIC == topics.WEBHOOK_ENDPOINTS
    assert len(set(topics.ALL)) == len(topics.ALL)
