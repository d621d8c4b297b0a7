"""The customers' app resends a call that went unanswered with the same dedupe_id, and takes a typed
refusal as the bank's answer.

A real local HTTP server stands in for the gateway: it drops the connection on the first request it
gets (the request may or may not have been done: the app cannot know), and answers the next one."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from simulator.app import OK, App
from simulator.loadgen import Stats
from simulator.population import Customer
from simulator.scenarios import PAYMENT, POT_DEPOSIT, Message


class DroppingServer:
    """Drops the first `drop` requests without an answer; answers the rest with `status` and `body`."""

    def __init__(self, drop: int, status: int, body: bytes) -> None:
        self.drop, self.status, self.body = drop, status, body
        self.requests: list[tuple[str, dict[str, list[str]], str]] = []  # (request line, form, token)
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(headers["content-length"]))
                self.requests.append((lines[0], parse_qs(body.decode()), headers.get("authorization", "")))
                if len(self.requests) <= self.drop:
                    writer.close()
                    return
                writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\ncontent-length: "
                             f"{len(self.body)}\r\n\r\n".encode() + self.body)  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def customers() -> list[Customer]:
    return [
        Customer(
            0, "ada@sim.example", "pw", "Ada", 0, account_id="acc_ada", token="tok-ada", pot_id="pot_ada"
        ),
        Customer(1, "tim@sim.example", "pw", "Tim", 0, account_id="acc_tim", token="tok-tim"),
    ]


async def test_an_unanswered_payment_is_resent_with_the_same_dedupe_id() -> None:
    server = DroppingServer(drop=2, status=201, body=b'{"payment": {"id": "p2p_1"}}')
    base = await server.start()
    app = App(base, customers(), timeout=5)
    stats = Stats()
    try:
        m = Message(at=0, seq=3, kind=PAYMENT, story="payment", card=0, merchant="", amount=1234,
                    counterparty=1, dedupe_id="S1D")  # fmt: skip
        code, doc = await app.call(m, stats)
    finally:
        await app.aclose()
        await server.stop()

    assert code == OK and doc == {"payment": {"id": "p2p_1"}}
    assert len(server.requests) == 3 and stats.resent == 2
    assert {line for line, _, _ in server.requests} == {"POST /payments HTTP/1.1"}
    assert all(token == "Bearer tok-ada" for _, _, token in server.requests), "on the payer's own token"
    forms = [form for _, form, _ in server.requests]
    assert all(form == forms[0] for form in forms), "every resend is the same request"
    assert forms[0]["dedupe_id"] == ["S1D"] and forms[0]["amount"] == ["1234"]
    assert forms[0]["source_account_id"] == ["acc_ada"] and forms[0]["recipient"] == ["tim@sim.example"]


async def test_a_typed_refusal_is_the_answer_and_is_not_resent() -> None:
    refusal = b'{"code": "insufficient_funds.account", "message": "no"}'
    server = DroppingServer(drop=0, status=422, body=refusal)
    base = await server.start()
    app = App(base, customers(), timeout=5)
    stats = Stats()
    try:
        m = Message(
            at=0, seq=4, kind=POT_DEPOSIT, story="pot", card=0, merchant="", amount=500, dedupe_id="S2D"
        )
        code, _ = await app.call(m, stats)
    finally:
        await app.aclose()
        await server.stop()

    assert code == "http_422:insufficient_funds.account"
    assert [line for line, _, _ in server.requests] == ["PUT /pots/pot_ada/deposit HTTP/1.1"]
    assert stats.resent == 0
