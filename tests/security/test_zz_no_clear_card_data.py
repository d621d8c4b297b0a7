"""Attacker's checklist, last: after everything above ran against this bank (cards issued, payments
authorised, declined, reversed, malformed messages carrying real card numbers), no PAN and no CVC is
in clear in any log line, any event (outboxes, the event log), any error answer or any database column.

Runs last in this folder (file name), on the same bank as the rest of the checklist."""

from __future__ import annotations

import re
import secrets

import httpx

from tests.security.conftest import SecurityBank
from tests.security.support import ISSUED, NETWORK_KEY, authorisation

DIGITS = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])")
HEX = re.compile(r"\\\\?x([0-9a-fA-F]{16,})")


def luhn(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def clear_card_data(text: str, bin_prefix: str) -> list[str]:
    """Every place in `text` (and in hex-encoded bytes inside it) where a PAN or CVC shows."""
    decoded = [text]
    for m in HEX.finditer(text):
        try:
            decoded.append(bytes.fromhex(m.group(1)[: len(m.group(1)) // 2 * 2]).decode("utf-8", "replace"))
        except ValueError:
            continue
    found = []
    for blob in decoded:
        for m in DIGITS.finditer(blob):
            number = m.group(0)
            if number.startswith(bin_prefix) and luhn(number):
                found.append(f"PAN …{number[-4:]} near {blob[max(0, m.start() - 60) : m.start()]!r}")
        for pan, cvc in ISSUED:
            if pan in blob:
                found.append(f"issued PAN …{pan[-4:]}")
            for pattern in (f'"cvc": "{cvc}"', f'"cvc":"{cvc}"', f"cvc={cvc}", f"'cvc': '{cvc}'"):
                if pattern in blob:
                    found.append(f"CVC of …{pan[-4:]} as {pattern!r}")
    return found


async def test_no_pan_or_cvc_in_answers_logs_events_or_columns(security_bank: SecurityBank) -> None:
    bank, a = security_bank, security_bank.a
    bin_prefix = a.pan[:6]
    answers = []
    async with httpx.AsyncClient(base_url=bank.url, timeout=30, headers={"x-network-key": NETWORK_KEY}) as c:
        # Messages carrying the real PAN that fail in every way: each answer, log line and row is scanned.
        for broken in (
            {"expiry": "13AB"},
            {"cvc": "000"},
            {"amount": -5},
            {"currency": "ZZZ"},
            {"merchant": "not an object"},
            {"mti": "0999"},
            {"amount": 10**9},
        ):
            r = await c.post("/network/authorisations", json=authorisation(a, **broken))
            answers.append(r.text)
        r = await c.post(
            "/network/clearing", json={"presentments": [{"pan": a.pan, "cvc": a.cvc, "amount": "x"}]}
        )
        answers.append(r.text)
        nid = f"SCAN{secrets.token_hex(5).upper()}"
        r = await c.post("/network/authorisations", json=authorisation(a, amount=250, nid=nid))
        answers.append(r.text)
    for text in answers:
        assert a.pan not in text and f'"cvc":"{a.cvc}"' not in text.replace(" ", ""), text[:300]

    logs = {p.name: p.read_text(errors="replace") for p in bank.cluster.log_files()}
    assert sum(len(t) for t in logs.values()) > 1000, (
        "the services logged nothing: the scan would prove nothing"
    )
    found = {name: clear_card_data(text, bin_prefix) for name, text in logs.items()}
    dump = bank.cluster.pg_dump()
    assert "cards.authorisations" in dump or "authorisations" in dump
    found["pg_dump"] = clear_card_data(dump, bin_prefix)
    found = {k: v[:5] for k, v in found.items() if v}
    assert not found, f"card data in clear: {found}"
    assert len(ISSUED) >= 2
