"""Tracing on top of the W3C trace context: one trace through HTTP server, client, the database edge,
the outbox, the relay and a consumer, recorded in the process's span ring."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared import context, tracing
from shared.events.consumer import Consumer
from shared.events.envelope import Envelope, EventData
from shared.events.outbox import Outbox, observe_events
from shared.http import ServiceClient

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class CardPaid(EventData):
    event_type = "test.card.paid"
    network_transaction_id: str
    amount: int


class FakeSession:
    """Enough of an AsyncSession for Outbox.emit: statements are kept, after-commit hooks run on commit."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.statements: list[Any] = []

    async def execute(self, statement: Any, params: Any = None) -> None:
        self.statements.append((statement, params))

    async def connection(self) -> FakeSession:  # shared.db.execute's way to a session's driver
        return self

    async def exec_driver_sql(self, sql: str, params: Any = None) -> None:
        self.statements.append((sql, params))

    def commit(self) -> None:
        for callback in self.info.pop("after_commit", {}).values():
            callback()


@pytest.fixture
def traced() -> Iterator[None]:
    tracing.configure("ops-test", tracing.TracingSettings(tracing=True, trace_sample_ratio=1.0))
    tracing.RING.clear()
    context.set_trace(None)
    yield
    context.set_trace(None)
    tracing.configure("ops-test", tracing.TracingSettings())


def spans_by_name() -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in tracing.RING.find(trace_id=PARENT.split("-")[1])}


async def test_one_trace_from_a_request_through_the_outbox_to_a_consumer(traced: None) -> None:
    seen: list[str] = []

    def transport(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["traceparent"])
        return httpx.Response(200, json={})

    server = tracing.start(
        "POST", kind=tracing.SERVER, parent=context.TraceContext.parse(PARENT), service="cards"
    )
    assert server is not None
    assert context.current_trace() == server.trace and server.trace.trace_id == PARENT.split("-")[1]

    async with ServiceClient("accounts", "http://accounts", transport=httpx.MockTransport(transport)) as c:
        await c.post("/internal/holds")
    outbox = Outbox("cards")
    session = FakeSession()
    envelope = await outbox.emit(
        session, "cards.test", "acc_1", CardPaid(network_transaction_id="NTX1", amount=5)
    )  # type: ignore[arg-type]
    session.commit()
    server.end(restore=False)
    assert context.current_trace() == server.trace  # a child span gave the context back

    spans = spans_by_name()
    client, emit = spans["POST accounts"], spans["outbox.emit test.card.paid"]
    assert seen == [
        f"00-{client['trace_id']}-{client['span_id']}-01"
    ]  # the client span is the callee's parent
    assert client["parent_id"] == emit["parent_id"] == server.trace.span_id
    assert spans["POST"]["parent_id"] == PARENT.split("-")[2] and spans["POST"]["service"] == "cards"
    assert envelope.traceparent == f"00-{emit['trace_id']}-{emit['span_id']}-01"
    assert emit["attributes"]["bank.network_transaction_id"] == "NTX1"

    # The relay publishes the row and records a span under the emit span.
    tracing.record_publishes("cards", [("cards.test", envelope.to_json())], started_ns=0)
    # Another service's consumer continues the event's trace.
    handled: list[str | None] = []

    async def handler(_session: Any, event: Envelope) -> None:
        handled.append(context.current_traceparent())

    consumer = Consumer(
        "transactions.feed", service="transactions", db=None, transport=None,  # type: ignore[arg-type]
        handlers={CardPaid.event_type: handler}, topics=["cards.test"],
    )  # fmt: skip
    received = Envelope.from_json(envelope.to_json())
    span = consumer._span(received)
    assert span is not None
    await handler(None, received)
    span.end()

    spans = spans_by_name()
    relay, consume = spans["relay.publish cards.test"], spans["consume test.card.paid"]
    assert relay["parent_id"] == consume["parent_id"] == emit["span_id"]
    assert consume["service"] == "transactions" and consume["kind"] == "consumer"
    assert handled == [f"00-{consume['trace_id']}-{consume['span_id']}-01"]  # what its own events carry
    # Found by a business id as well as by the trace id: the whole trace comes back.
    assert {s["span_id"] for s in tracing.RING.find(search="NTX1")} == {
        s["span_id"] for s in tracing.RING.find(trace_id=PARENT.split("-")[1])
    }


async def test_committed_events_are_observed_once_and_rolled_back_ones_never(traced: None) -> None:
    counted: list[str] = []
    observe_events("ops-observed", lambda e: counted.append(e.id))
    outbox = Outbox("ops-observed")
    committed, rolled_back = FakeSession(), FakeSession()
    event = await outbox.emit(committed, "t", "acc_1", CardPaid(network_transaction_id="N", amount=1))  # type: ignore[arg-type]
    await outbox.emit(rolled_back, "t", "acc_1", CardPaid(network_transaction_id="M", amount=1))  # type: ignore[arg-type]
    assert counted == []
    committed.commit()
    assert counted == [event.id]


def test_unsampled_traces_propagate_their_id_but_record_nothing() -> None:
    tracing.configure("ops-test", tracing.TracingSettings(tracing=True, trace_sample_ratio=0.0))
    tracing.RING.clear()
    try:
        span = tracing.start("GET", kind=tracing.SERVER, parent=None, service="ops-test")
        assert span is not None and span.trace.flags == "00"
        assert tracing.child("db.transaction") is None  # nothing below an unsampled span
        span.end()
        sampled_parent = context.TraceContext.parse(PARENT)
        upstream_sampled = tracing.start("GET", kind=tracing.SERVER, parent=sampled_parent, service="x")
        assert upstream_sampled is not None and upstream_sampled.trace.flags == "01"  # the caller decided
        upstream_sampled.end()
        assert [s["name"] for s in tracing.RING.find(trace_id=PARENT.split("-")[1])] == ["GET"]
        assert len(tracing.RING.spans) == 1
    finally:
        tracing.configure("ops-test", tracing.TracingSettings())


def test_tracing_off_records_nothing_and_changes_nothing() -> None:
    tracing.configure("ops-test", tracing.TracingSettings(tracing=False))
    try:
        assert tracing.start("GET", kind=tracing.SERVER, parent=None) is None
        context.set_trace(context.TraceContext.parse(PARENT))
        assert tracing.child("db.transaction") is None
        tracing.record_publishes("x", [("t", json.dumps({"traceparent": PARENT}))], 0)
    finally:
        context.set_trace(None)
        tracing.configure("ops-test", tracing.TracingSettings())


def test_the_ring_keeps_finished_spans_out_of_the_garbage_collectors_way(traced: None) -> None:
    """Full collections walk every tracked object: 20,000 stored spans must not be among them."""
    parent = context.TraceContext.parse(PARENT)
    for n in range(50):
        span = tracing.start("POST", kind=tracing.SERVER, parent=parent, service="ops-test",
                             attributes={"url.path": "/network/authorisations", "n": n})  # fmt: skip
        assert span is not None
        span.set("bank.tags", ["a", "b"])
        span.end()
    for _ in range(5):  # a tuple is untracked once what it holds is: up to a pass per level of nesting
        gc.collect()
    assert len(tracing.RING.spans) == 50
    assert not any(gc.is_tracked(stored) for stored in tracing.RING.spans)
    found = tracing.RING.recent("/network/authorisations", limit=1)[0]
    assert found["attributes"] == {"url.path": "/network/authorisations", "n": 49, "bank.tags": ["a", "b"]}
