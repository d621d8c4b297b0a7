"""tests/cards/test_no_clear_pan.py, over the ISO 8583 link: no PAN or CVC, in clear or in hex, in any
log line (every logger at DEBUG), event or row, whatever the link is sent: approvals, repeats,
declines, format errors with the PAN in them, messages that close the link, advices, reversals,
accounts down. (The link's answers echo DE 2, as the profile says: they are not searched.)"""

from __future__ import annotations

import asyncio

import iso8583

from shared.config import BankSettings
from shared.db import Database
from tests.cards.conftest import authorisation, reversal
from tests.cards.test_iso8583_support import SPEC, encode, exchange, framed, iso, link_bank, plain_merchant
from tests.cards.test_no_clear_pan import every_log_line, pg_dump


async def test_the_pan_and_cvc_appear_in_no_log_event_or_row_over_the_link(
    db: Database, settings: BankSettings
) -> None:
    with every_log_line() as logs:
        async with link_bank(db, settings) as lb:
            bank = lb.bank
            ada = await bank.customer(balance=10_000)
            card = await bank.issue(ada)
            pan, cvc = card["pan"], card["cvc"]
            link = await lb.link()

            def purchase(amount: int = 1_915, **overrides: object) -> dict[str, object]:
                return authorisation(card, amount, merchant=plain_merchant(), **overrides)

            approved = purchase(1_000)
            await exchange(link, iso(approved))
            await exchange(link, iso(approved, "0101"))
            await exchange(link, iso(purchase(1_000, cvc=f"{(int(cvc) + 1) % 1000:03d}")))
            await exchange(link, {**iso(purchase()), "2": pan[:-2] + "AB"})
            await exchange(link, {**iso(purchase()), "4": "ten pounds!!"})
            await exchange(link, {**iso(purchase()), "48": f"92{cvc}"})
            unknown = {**card, "pan": pan[:-1] + str((int(pan[-1]) + 1) % 10)}
            await exchange(link, iso(authorisation(unknown, merchant=plain_merchant())))
            await exchange(link, iso({**purchase(300), "mti": "0120", "response_code": "00"}))
            await exchange(link, iso({**reversal(approved, 400), "pan": pan}))
            await bank.accounts.stop()
            await exchange(link, iso(purchase(500)))
            await bank.accounts.start()

            # Messages that close their link, each with the PAN inside.
            whole = bytes(iso8583.encode(iso(purchase()), SPEC)[0])
            key = link.network_key
            sign_on = {
                "t": "0800",
                "7": "1126081500",
                "11": "000001",
                "70": "001",
                "48": f"01{len(key):02d}{key}",
            }
            for data in (
                framed(whole[:30]),  # the PAN cut short: no STAN
                framed(b"XXXX" + whole[4:]),  # no MTI
                (9000).to_bytes(2, "big") + whole,  # over 8 KiB
                framed(whole + pan.encode()),  # bytes after the last field (a STAN: answered 30)
            ):
                _, writer = await asyncio.open_connection("127.0.0.1", lb.port)
                writer.write(encode(sign_on) + data)
                await asyncio.sleep(0.1)
                writer.close()
            await link.close()
            payloads = [str(e) for e in await bank.events()]

    assert len(logs.lines) > 50 and any("ISO 8583" in line for line in logs.lines)
    assert any("format error" in line for line in logs.lines)
    assert any("closed by cards" in line for line in logs.lines)
    dump = await pg_dump(settings.database_url)
    middle = pan[6:15]
    haystacks = {"logs": "\n".join(logs.lines), "events": "\n".join(payloads), "pg_dump": dump}
    for name, haystack in haystacks.items():
        for secret in (pan, middle, pan.encode().hex(), middle.encode().hex(), pan.encode().hex().upper()):
            assert secret not in haystack, name
        assert f"92{len(cvc):02d}{cvc}" not in haystack and f"'cvc': '{cvc}'" not in haystack, name
