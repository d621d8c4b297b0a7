"""The customers' app resends a call that went unanswered with the same dedupe_id, and takes a typed
refusal as the bank's answer.

A real local HTTP server stands in for the gateway: it drops the connection on the first request it
gets (the request may or may not have been done: the app cannot know), and answers the next one."""

from __future__ import annotations

from simulator.app import OK, App
from simulator.loadgen import Stats
from simulator.population import Customer
from simulator.scenarios import PAYMENT, POT_DEPOSIT, Message
from tests.support.raw_http import RawHttpServer, RawRequest, answer


class DroppingServer(RawHttpServer):
    """Drops the first `drop` requests without an answer; answers the rest with `status` and `body`."""

    def __init__(self, drop: int, status: int, body: bytes) -> None:
        super().__init__(self.reply)
        self.drop, self.status, self.body = drop, status, body
        self.calls: list[tuple[str, dict[str, list[str]], str]] = []  # (request line, form, token)

    def reply(self, request: RawRequest) -> bytes | None:
        self.calls.append((request.line, request.form(), request.headers.get("authorization", "")))
        if len(self.calls) <= self.drop:
            return None
        return answer(self.status, self.body, "content-type: application/json")


def customers() -> list[Customer]:
    return [
        Customer(
            0, "ada@sim.example", "pw", "Ada", 0, account_id="acc_ada", token="tok-ada", pot_id="pot_ada"
        ),
        Customer(1, "tim@sim.example", "pw", "Tim", 0, account_id="acc_tim", token="tok-tim"),
    ]


async def test_an_unanswered_payment_is_resent_with_the_same_dedupe_id() -> None:
    server = DroppingServer(drop=2, status=201, body=b'{"payment": {"id": "p2p_1"}}')
    base = (await server.start()).url
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
    assert len(server.calls) == 3 and stats.resent == 2
    assert {line for line, _, _ in server.calls} == {"POST /payments HTTP/1.1"}
    assert all(token == "Bearer tok-ada" for _, _, token in server.calls), "on the payer's own token"
    forms = [form for _, form, _ in server.calls]
    assert all(form == forms[0] for form in forms), "every resend is the same request"
    assert forms[0]["dedupe_id"] == ["S1D"] and forms[0]["amount"] == ["1234"]
    assert forms[0]["source_account_id"] == ["acc_ada"] and forms[0]["recipient"] == ["tim@sim.example"]


async def test_a_typed_refusal_is_the_answer_and_is_not_resent() -> None:
    refusal = b'{"code": "insufficient_funds.account", "message": "no"}'
    server = DroppingServer(drop=0, status=422, body=refusal)
    base = (await server.start()).url
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
    assert [line for line, _, _ in server.calls] == ["PUT /pots/pot_ada/deposit HTTP/1.1"]
    assert stats.resent == 0
