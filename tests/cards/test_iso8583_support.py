"""Helpers shared by the ISO 8583 link's tests (no tests here).

The network's side is the simulator's link client (simulator/iso8583.py): pyiso8583 encodes and
decodes every message, an implementation independent of the bank's own codec. Messages are built
from the JSON helpers of tests/cards/conftest.py, so one dict can go over either wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import iso8583
import pytest_asyncio
from iso8583.specs import default_ascii

from services.cards.iso8583.link import LinkServer
from shared.config import BankSettings
from shared.db import Database
from simulator.iso8583 import Link, financial_doc, reversal_doc
from tests.cards.conftest import NETWORK_KEY, Bank, merchant, running_bank

SPEC = default_ascii
# What an answer echoes from its request (docs/iso8583.md).
ECHOED = ("2", "3", "4", "7", "11", "37", "41", "42", "49", "63")


@dataclass
class LinkBank:
    bank: Bank
    server: LinkServer

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    async def link(self, sign_on: bool = True, key: str = NETWORK_KEY) -> Link:
        link = Link("127.0.0.1", self.port, key)
        await link.open(sign_on=sign_on)
        return link


@asynccontextmanager
async def link_bank(db: Database, settings: BankSettings, **cards_overrides: Any) -> AsyncIterator[LinkBank]:
    overrides = {"iso8583_port": 0, **cards_overrides}
    async with running_bank(db, settings, **overrides) as bank:
        server: LinkServer = bank.cards.app.state.iso8583_link
        await asyncio.wait_for(server.listening.wait(), 10)
        yield LinkBank(bank, server)


@pytest_asyncio.fixture(loop_scope="session")
async def lbank(db: Database, settings: BankSettings) -> AsyncIterator[LinkBank]:
    async with link_bank(db, settings) as running:
        yield running


def plain_merchant(**overrides: str) -> dict[str, Any]:
    """conftest's merchant as DE 42/43 can carry it (no postcode)."""
    return {**merchant(), "postcode": None, **overrides}


def de7(body: dict[str, Any]) -> str:
    return datetime.fromisoformat(body["transmission_time"].replace("Z", "+00:00")).strftime("%m%d%H%M%S")


def iso(body: dict[str, Any], mti: str | None = None) -> dict[str, str]:
    """The ISO 8583 form of a JSON message (0100/0101, 0120/0121, 0400/0401), its STAN and DE 7 kept."""
    mti = mti or body["mti"]
    doc = reversal_doc(body, mti) if mti.startswith("04") else financial_doc(body, mti)
    doc["11"], doc["7"] = body["stan"], de7(body)
    return doc


def encode(doc: dict[str, str]) -> bytes:
    """One framed message, as pyiso8583 encodes it."""
    raw, _ = iso8583.encode(dict(doc), SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


def framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


async def exchange(link: Link, doc: dict[str, str], timeout: float = 30.0) -> dict[str, str]:
    return await link.exchange(dict(doc), timeout)


def assert_echoes(request: dict[str, str], answer: dict[str, str]) -> None:
    for f in ECHOED:
        assert answer.get(f) == request.get(f), (f, answer.get(f))
