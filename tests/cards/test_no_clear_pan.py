"""No clear PAN or CVC reaches the database, a log line, an event or an error message.

The scenario exercises every path that sees a PAN (issue, approve, decline, a malformed message, an
unknown card, an advice, a reversal, clearing, accounts down) with every logger at DEBUG (SQLAlchemy
then logs each statement's parameters), then greps the captured log lines, every HTTP answer but the
issuing one, the outbox payloads and a pg_dump of the whole database (made with the PostgreSQL wheel's
own pg_dump).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from bank.infra.postgres import POSTGRES_BIN_PATH
from shared.config import BankSettings, to_libpq
from shared.db import Database
from shared.observability import JsonFormatter
from tests.cards.conftest import authorisation, presentment, reversal, running_bank


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def every_log_line() -> Iterator[Capture]:
    capture = Capture()
    # uvicorn's loggers may not propagate (other tests configure them), so listen on them directly too.
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy.engine"]
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
        if lg.name != "root":
            lg.propagate = False
    try:
        yield capture
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(capture)
            lg.setLevel(level)
            lg.propagate = propagate


async def pg_dump(database_url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(POSTGRES_BIN_PATH / "pg_dump"),
        "--no-owner",
        to_libpq(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_pan_and_cvc_appear_nowhere_but_the_issuing_answer(
    db: Database, settings: BankSettings
) -> None:
    answers: list[str] = []
    with every_log_line() as logs:
        async with running_bank(db, settings) as bank:
            ada = await bank.customer(balance=10_000)
            card = await bank.issue(ada)
            pan, cvc = card["pan"], card["cvc"]
            await bank.controls(ada, card, spend_limit_per_day="9000")

            async def network(path: str, body: object) -> None:
                r = await bank.network(path, body)
                answers.append(r.text)

            approved = authorisation(card, 1_000)
            await network("authorisations", approved)
            await network("authorisations", approved)
            await network("authorisations", authorisation(card, 1_000, cvc=f"{(int(cvc) + 1) % 1000:03d}"))
            await network("authorisations", {**authorisation(card), "amount": "ten pounds"})
            await network("authorisations", {**authorisation(card), "pan": pan + "x"})
            await network(
                "authorisations", authorisation({**card, "pan": pan[:-1] + str((int(pan[-1]) + 1) % 10)})
            )
            await network("advices", {**authorisation(card, 300), "mti": "0120", "response_code": "00"})
            await network("reversals", {**reversal(approved, 400), "pan": pan})
            await network("clearing", presentment(card, 400, approved["network_transaction_id"]))
            await network(
                "clearing", {"presentments": [presentment(card, 50, None, processing_code="200000")]}
            )
            await bank.accounts.stop()
            await network("authorisations", authorisation(card, 500))
            await network("clearing", presentment(card, 100, None))
            await bank.accounts.start()
            listed = await bank.http.get(
                "/cards", params={"account_id": ada.account_id}, headers=bank.auth(ada)
            )
            answers.append(listed.text)
            await bank.http.post(f"/cards/{card['id']}/freeze", headers=bank.auth(ada))
            await network("authorisations", authorisation(card, 500))
            payloads = [str(e) for e in await bank.events()]

    assert len(logs.lines) > 100 and any("INSERT INTO cards.authorisations" in line for line in logs.lines)
    assert {"card.authorisation.approved", "card.authorisation.declined", "card.authorisation.reversed",
            "card.transaction.settled", "card.refund.settled"} <= {e.split("'type': '")[1].split("'")[0]
                                                                   for e in payloads}  # fmt: skip
    dump = await pg_dump(settings.database_url)
    assert "cards.cards" in dump and card["id"] in dump and card["last4"] in dump
    middle = pan[6:15]  # the account digits: neither the public BIN nor the stored last four
    haystacks = {"logs": "\n".join(logs.lines), "answers": "\n".join(answers), "events": "\n".join(payloads),
                 "pg_dump": dump}  # fmt: skip
    for name, haystack in haystacks.items():
        assert pan not in haystack, name
        assert middle not in haystack, name
        assert (
            '"cvc"' not in haystack and f"cvc={cvc}" not in haystack and f"'cvc': '{cvc}'" not in haystack
        ), name
