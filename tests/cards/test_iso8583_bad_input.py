"""The link's rules for bad input and for its own life, on the real listener (raw sockets, pyiso8583).

A message that does not decode but whose MTI and STAN can be read gets its response MTI with
DE 39 = 30; anything worse closes the link, as do a length prefix over 8 KiB, no sign-on within the
limit and silence longer than the idle timeout; echoes keep a link open; only allowed addresses may
connect. None of it touches the other links.
"""

from __future__ import annotations

import asyncio
import contextlib

import iso8583

from services.cards.iso8583.link import LinkServer, LinkSettings, Services, link_settings
from shared.config import BankSettings
from shared.db import Database
from tests.cards.conftest import NETWORK_KEY, authorisation
from tests.cards.test_iso8583_support import (
    SPEC,
    LinkBank,
    encode,
    framed,
    iso,
    lbank,
    link_bank,
    plain_merchant,
)

__all__ = ["lbank"]


class Raw:
    """A bare connection: frames written as they are, answers read one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, sign_on: bool = True) -> Raw:
        raw = cls(*await asyncio.open_connection("127.0.0.1", port))
        if sign_on:
            key = f"01{len(NETWORK_KEY):02d}{NETWORK_KEY}"
            raw.send(encode({"t": "0800", "7": "1126081500", "11": "000001", "70": "001", "48": key}))
            assert (await raw.answer())["39"] == "00"
        return raw

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, timeout: float = 10.0) -> dict[str, str]:
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(2)
            doc, _ = iso8583.decode(await self.reader.readexactly(int.from_bytes(head, "big")), SPEC)
        return doc

    async def closed(self, timeout: float = 5.0) -> bool:
        """True if the bank closes the connection within `timeout` (whatever it answered before)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def test_format_errors_are_answered_30_and_nothing_is_decided(lbank: LinkBank) -> None:
    bank = lbank.bank
    card = await bank.issue(await bank.customer(balance=10_000))
    raw = await Raw.open(lbank.port)
    good = iso(authorisation(card, 1_000, merchant=plain_merchant()))
    broken = {
        "amount not digits": {**good, "4": "00000000ABCD"},
        "no such date": {**good, "7": "1399999999"},
        "bad subelements": {**good, "48": "9"},
        "PAN not digits": {**good, "2": "53552200000000AB"},
        "no MCC": {k: v for k, v in good.items() if k != "18"},
        "amount zero": {**good, "4": "000000000000"},
        "unknown message type": {**good, "t": "0200"},
        "an unknown network management code": {"t": "0800", "7": "1126081500", "11": "000777", "70": "999"},
    }
    for name, doc in broken.items():
        raw.send(encode(doc))
        answer = await raw.answer()
        expected_mti = {"0200": "0210", "0800": "0810"}.get(doc["t"], "0110")
        assert (answer["t"], answer["39"], answer["11"]) == (expected_mti, "30", doc["11"]), name
        assert answer.get("63") == doc.get("63") and answer["7"] == doc["7"], name
        assert "38" not in answer, name
    # Decodable as far as its STAN, then broken: DE 63 says 40 characters and the message ends.
    cut = bytes(iso8583.encode({k: v for k, v in good.items() if k != "48"}, SPEC)[0])
    raw.send(framed(cut[:-5]))
    answer = await raw.answer()
    assert (answer["t"], answer["39"], answer["11"], answer["7"]) == ("0110", "30", good["11"], good["7"])
    assert "63" not in answer
    # Non-ASCII inside DE 43, after the STAN.
    bad = bytearray(bytes(iso8583.encode(dict(good), SPEC)[0]))
    bad[bad.index(b"BRIGHTBIRD")] = 0xC9
    raw.send(framed(bytes(bad)))
    assert (await raw.answer())["39"] == "30"
    assert await bank.rows("SELECT 1 FROM cards.authorisations") == []
    raw.send(encode(good))  # the link still works
    assert (await raw.answer())["39"] == "00"
    raw.close()


async def test_worse_input_closes_that_link_alone(lbank: LinkBank) -> None:
    bank = lbank.bank
    card = await bank.issue(await bank.customer(balance=100_000))
    witness = await Raw.open(lbank.port)
    worse = {
        "a length prefix over 8 KiB": (8 * 1024 + 1).to_bytes(2, "big") + b"0100",
        "no message type": framed(b"HELLO, WORLD"),
        "a bitmap that is not hex": framed(b"0100ZZZZ000000000000"),
        "a message type but no STAN (the PAN's length is not digits)": framed(
            b"0100" + b"4000000000000000" + b"AB"
        ),
        "an empty message": framed(b""),
        "answers to nothing": None,
    }
    for name, data in worse.items():
        raw = await Raw.open(lbank.port)
        if data is None:  # an answer MTI is dropped, not answered, and the link stays open
            raw.send(encode({"t": "0110", "7": "1126081500", "11": "000009", "39": "00"}))
            raw.send(encode({"t": "0800", "7": "1126081500", "11": "000010", "70": "301"}))
            assert (await raw.answer())["11"] == "000010", name
            raw.close()
            continue
        raw.send(data)
        assert await raw.closed(), name
        witness.send(encode(iso(authorisation(card, 100, merchant=plain_merchant()))))
        assert (await witness.answer())["39"] == "00", name
    # A message of 8 KiB exactly is read (an echo padded with private fields, which are ignored).
    raw = await Raw.open(lbank.port)
    echo = {"t": "0800", "7": "1126081500", "11": "000042", "70": "301",
            **{str(f): "X" * 999 for f in (46, 47, 56, 57, 58, 59, 60, 61)}, "62": "X" * 118}  # fmt: skip
    assert len(encode(echo)) == 2 + 8 * 1024
    raw.send(encode(echo))
    assert (await raw.answer())["39"] == "00"
    raw.close()
    witness.close()


async def test_sign_on_deadline_idle_timeout_and_echoes(db: Database, settings: BankSettings) -> None:
    async with link_bank(db, settings, iso8583_sign_on_seconds=0.5, iso8583_idle_seconds=1.0) as lb:
        unsigned = await Raw.open(lb.port, sign_on=False)
        began = asyncio.get_running_loop().time()
        assert await unsigned.closed(3)
        assert 0.4 <= asyncio.get_running_loop().time() - began < 3

        silent = await Raw.open(lb.port)
        began = asyncio.get_running_loop().time()
        assert await silent.closed(4)
        assert 0.9 <= asyncio.get_running_loop().time() - began < 4

        echoing = await Raw.open(lb.port)
        for i in range(8):  # 2.4 s, well past the idle timeout
            await asyncio.sleep(0.3)
            echoing.send(encode({"t": "0800", "7": "1126081500", "11": f"{i + 100:06d}", "70": "301"}))
            assert (await echoing.answer())["39"] == "00"
        assert not await echoing.closed(0.2)
        echoing.close()


async def test_only_allowed_addresses_may_connect(db: Database, settings: BankSettings) -> None:
    async with link_bank(db, settings, iso8583_allow_networks=["10.0.0.0/8"]) as lb:
        raw = Raw(*await asyncio.open_connection("127.0.0.1", lb.port))
        assert await raw.closed(3)
        assert len(lb.server.links) == 0
    ready = await LinkServer(Services(_never, _never, _never), _settings()).checker()  # not listening yet
    assert ready == (None, {"listening": "no"})


async def _never(_: object) -> dict[str, str]:
    raise AssertionError("not called")


def _settings() -> LinkSettings:
    return link_settings("127.0.0.1", 0, NETWORK_KEY, ["127.0.0.0/8"])
