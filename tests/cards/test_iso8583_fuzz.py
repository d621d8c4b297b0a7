"""Random and broken frames never crash the listener or touch the other links.

Each example opens a link of its own (signed on), sends bytes drawn by Hypothesis (random bytes,
random frames, a valid 0100 truncated, with bytes flipped or a field replaced, or under a length
prefix that lies), reads whatever comes back, and closes it. A witness link, open for the whole
test, must then still get its echo and an authorisation answered, and a new link must still sign
on. Any approval the bank gives is for a message it recorded, for the amount it echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import iso8583
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.iso8583 import Link
from tests.cards.conftest import authorisation
from tests.cards.test_iso8583_support import (
    SPEC,
    LinkBank,
    encode,
    exchange,
    framed,
    iso,
    lbank,
    plain_merchant,
)

__all__ = ["lbank"]


PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
APPROVED_SQL = (
    "SELECT amount FROM cards.authorisations WHERE network_transaction_id = :n AND status = 'approved'"
)


def valid(card: dict[str, Any]) -> dict[str, str]:
    return iso(authorisation(card, 150, merchant=plain_merchant()))


@st.composite
def hostile(draw: st.DrawFn, card: dict[str, Any]) -> bytes:
    doc = valid(card)
    raw = bytes(iso8583.encode(dict(doc), SPEC)[0])
    how = draw(st.sampled_from(["bytes", "frame", "truncated", "flipped", "field", "lying_prefix", "many"]))
    if how == "bytes":
        return draw(st.binary(min_size=1, max_size=200))
    if how == "frame":
        return framed(draw(st.binary(max_size=300)))
    if how == "truncated":
        return framed(raw[: draw(st.integers(0, len(raw) - 1))])
    if how == "flipped":
        body = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        return framed(bytes(body))
    if how == "field":
        key = draw(st.sampled_from(sorted(k for k in doc if k != "t")))
        size = len(doc[key])
        doc[key] = draw(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=size, max_size=size)
        )
        return encode(doc)
    if how == "lying_prefix":
        return (len(raw) + draw(st.integers(-len(raw), 40))).to_bytes(2, "big") + raw
    return b"".join(
        draw(st.lists(st.sampled_from([encode(valid(card)), framed(b"\x00" * 7), b"\xff"]), max_size=5))
    )


async def drain(reader: asyncio.StreamReader, seconds: float) -> list[dict[str, str]]:
    """The answers that come back within `seconds` (or until the bank closes the link)."""
    answers: list[dict[str, str]] = []
    with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        async with asyncio.timeout(seconds):
            while True:
                head = await reader.readexactly(2)
                doc, _ = iso8583.decode(await reader.readexactly(int.from_bytes(head, "big")), SPEC)
                answers.append(doc)
    return answers


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_hostile_frames_never_crash_the_listener_or_touch_other_links(
    lbank: LinkBank, data: st.DataObject
) -> None:
    bank = lbank.bank
    state: dict[str, Any] = getattr(lbank, "fuzz", {})
    if not state:
        state["card"] = await bank.issue(await bank.customer(balance=10_000_000))
        state["witness"] = await lbank.link()
        lbank.fuzz = state  # type: ignore[attr-defined]
    card, witness = state["card"], state["witness"]
    payload = data.draw(hostile(card))

    reader, writer = await asyncio.open_connection("127.0.0.1", lbank.port)
    writer.write(encode({"t": "0800", "7": "1126081500", "11": "000001", "70": "001",
                         "48": f"01{len(witness.network_key):02d}{witness.network_key}"}))  # fmt: skip
    writer.write(payload)
    answers = await drain(reader, 0.3)
    writer.close()
    assert answers and answers[0]["39"] == "00"  # the sign-on
    for answer in answers[1:]:
        assert answer["t"] in ("0110", "0130", "0410", "0810") or answer["t"][2] in "13579", answer
        if answer["t"] == "0110" and answer.get("39") == "00":
            rows = await bank.rows(APPROVED_SQL, n=answer.get("63"))
            assert rows and f"{rows[0]['amount']:012d}" == answer["4"], answer

    assert (await witness.network_management("301"))["39"] == "00"
    assert (await exchange(witness, valid(card)))["39"] == "00"
    fresh = Link("127.0.0.1", lbank.port, witness.network_key)
    await fresh.open()
    await fresh.close()


async def test_every_truncation_of_a_valid_message_then_a_hang_up(lbank: LinkBank) -> None:
    bank = lbank.bank
    card = await bank.issue(await bank.customer(balance=1_000_000))
    witness = await lbank.link()
    frame = encode(valid(card))
    for end in range(0, len(frame), 3):
        _, writer = await asyncio.open_connection("127.0.0.1", lbank.port)
        writer.write(frame[:end])
        await writer.drain()
        writer.close()
    await asyncio.sleep(0.2)
    assert (await exchange(witness, valid(card)))["39"] == "00"
    assert len(lbank.server.links) == 1  # every hung-up link is gone
    await witness.close()
