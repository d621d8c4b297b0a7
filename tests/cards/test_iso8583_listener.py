"""The listener on its own, in front of stand-in services that answer when a test says so: answers
leave in the order they complete, a shed or failed message is answered 91 (no error text logged),
a link with too much in flight is not read from, a shutdown lets the answers in flight out, and a
cut link loses only its own answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from services.cards.iso8583.link import LOST, LinkServer, Services, link_settings
from shared.errors import BankError
from simulator.iso8583 import Link, LinkDown
from tests.cards.conftest import NETWORK_KEY, authorisation
from tests.cards.test_iso8583_support import iso, plain_merchant
from tests.support.waiting import eventually

CARD = {"pan": "5355220000000001", "expiry": "11/29", "cvc": "123"}


class Gated:
    """authorise(msg) waits until `release(nid)`; then answers 00, or raises what `fail` says."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.seen: list[str] = []
        self.fail: dict[str, Exception] = {}

    def gate(self, nid: str) -> asyncio.Event:
        return self.gates.setdefault(nid, asyncio.Event())

    def release(self, *nids: str) -> None:
        for nid in nids:
            self.gate(nid).set()

    async def authorise(self, msg: Any) -> dict[str, Any]:
        nid = msg.network_transaction_id
        self.seen.append(nid)
        await self.gate(nid).wait()
        if nid in self.fail:
            raise self.fail[nid]
        return {"response_code": "00", "approval_code": "ABC123", "network_transaction_id": nid}


@asynccontextmanager
async def listener(gated: Gated, **timing: Any) -> AsyncIterator[LinkServer]:
    async def unused(_: Any) -> dict[str, Any]:
        raise AssertionError("not called")

    server = LinkServer(
        Services(gated.authorise, unused, unused),
        link_settings("127.0.0.1", 0, NETWORK_KEY, ["127.0.0.0/8"], **timing),
    )
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.listening.wait(), 5)
    try:
        yield server
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def open_link(server: LinkServer) -> Link:
    assert server.port is not None
    link = Link("127.0.0.1", server.port, NETWORK_KEY)
    await link.open()
    return link


def message() -> tuple[str, dict[str, str]]:
    body = authorisation(CARD, 100, merchant=plain_merchant())
    return body["network_transaction_id"], iso(body)


async def test_answers_leave_as_they_complete_not_in_order() -> None:
    gated = Gated()
    async with listener(gated) as server:
        link = await open_link(server)
        (a, first), (b, second) = message(), message()
        answers = [asyncio.create_task(link.exchange(doc, 10)) for doc in (first, second)]
        await eventually(lambda: len(gated.seen) == 2)
        gated.release(b)
        done, _ = await asyncio.wait(answers, return_when=asyncio.FIRST_COMPLETED)
        assert done == {answers[1]} and answers[1].result()["63"] == b
        gated.release(a)
        assert (await answers[0])["63"] == a and answers[0].result()["11"] == first["11"]
        await link.close()


async def test_a_shed_or_failed_message_is_answered_91_without_its_error_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gated = Gated()
    async with listener(gated) as server:
        link = await open_link(server)
        (shed, shed_doc), (failed, failed_doc) = message(), message()
        gated.fail[shed] = BankError("rate_limited.authorisations", "too many")
        gated.fail[failed] = RuntimeError(f"a statement with {CARD['pan']} in its parameters")
        gated.release(shed, failed)
        with caplog.at_level(logging.DEBUG):
            answers = await asyncio.gather(link.exchange(shed_doc, 10), link.exchange(failed_doc, 10))
        assert [a["39"] for a in answers] == ["91", "91"] and all("38" not in a for a in answers)
        logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        assert "RuntimeError" in logged and CARD["pan"] not in logged and CARD["pan"][6:15] not in logged
        await link.close()


async def test_a_link_with_too_much_in_flight_is_not_read_from_until_it_eases() -> None:
    gated = Gated()
    async with listener(gated, max_in_flight=2) as server:
        link = await open_link(server)
        sent = [message() for _ in range(5)]
        answers = [asyncio.create_task(link.exchange(doc, 10)) for _, doc in sent]
        await eventually(lambda: len(gated.seen) == 2)
        await asyncio.sleep(0.2)
        assert len(gated.seen) == 2  # the other three wait in the socket
        gated.release(*(nid for nid, _ in sent))
        assert [(await a)["63"] for a in answers] == [nid for nid, _ in sent]
        await link.close()


async def test_a_shutdown_lets_the_answers_in_flight_out() -> None:
    gated = Gated()
    server = LinkServer(
        Services(gated.authorise, gated.authorise, gated.authorise),
        link_settings("127.0.0.1", 0, NETWORK_KEY, ["127.0.0.0/8"]),
    )
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.listening.wait(), 5)
    link = await open_link(server)
    nid, doc = message()
    answer = asyncio.create_task(link.exchange(doc, 10))
    await eventually(lambda: gated.seen == [nid])
    task.cancel()
    await asyncio.sleep(0.2)
    gated.release(nid)
    assert (await answer)["39"] == "00"
    await asyncio.gather(task, return_exceptions=True)
    assert await link.wait_closed(5)


async def test_a_cut_link_loses_its_own_answers_only() -> None:
    gated = Gated()
    async with listener(gated) as server:
        cut, kept = await open_link(server), await open_link(server)
        (lost, lost_doc), (fine, fine_doc) = message(), message()
        doomed = asyncio.create_task(cut.exchange(lost_doc, 10))
        answer = asyncio.create_task(kept.exchange(fine_doc, 10))
        await eventually(lambda: len(gated.seen) == 2)
        cut.abort()
        with pytest.raises(LinkDown):
            await doomed
        await eventually(lambda: len(server.links) == 1)
        lost_before = LOST._value.get()
        gated.release(lost, fine)
        assert (await answer)["63"] == fine
        await eventually(lambda: LOST._value.get() == lost_before + 1)
        await kept.close()


def test_the_listener_runs_on_uvloop_as_cards_does_under_uvicorn() -> None:
    """uvloop's transports are not asyncio.Transport subclasses; the service runs on them."""
    import uvloop

    async def scenario() -> None:
        gated = Gated()
        async with listener(gated, max_in_flight=1) as server:
            link = await open_link(server)
            sent = [message() for _ in range(3)]
            answers = [asyncio.create_task(link.exchange(doc, 10)) for _, doc in sent]
            await eventually(lambda: len(gated.seen) == 1)
            gated.release(*(nid for nid, _ in sent))
            assert [(await a)["63"] for a in answers] == [nid for nid, _ in sent]
            await link.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
