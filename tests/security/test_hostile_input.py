"""Attacker's checklist, input: injection and huge strings in every text field, oversized and malformed
bodies, bad amounts and currencies, replayed idempotency keys and network messages, rate limits."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import uuid

import httpx
import pytest

from tests.security.conftest import SecurityBank
from tests.security.support import (
    ISSUED,
    NETWORK_KEY,
    authorisation,
    build,
    form_text_fields,
    is_typed_error,
    operations,
)

INJECTIONS = [
    "\\x00\x00nul",
    "' OR '1'='1",
    "'; DROP TABLE accounts.accounts; --",
    "acc_x' UNION SELECT pan_ciphertext FROM cards.cards --",
    '"; SELECT pg_sleep(5); --',
    "%00%27",
    "nul\u0000in the middle",
    "{{7*7}}${7*7}",
    "../../../../etc/passwd",
    "\ud800",  # a lone surrogate: PostgreSQL refuses it in text
]
HUGE = "A" * 100_000
HUGE_QUERY = "A" * 60_000
BAD_AMOUNTS = [
    "-1",
    "0",
    "1.5",
    "0.01",
    str(2**63),
    str(2**64),
    "1e3",
    "1E2",
    "NaN",
    "Infinity",
    "abc",
    "",
    " 100",
    "0x10",
    "\u0661\u0660\u0660",
    "+5",
    "100,00",
    "5_000",
]
BAD_CURRENCIES = ["XXX", "ZZZ", "gbp", "GB", "GBPP", "", "€", "GBP' OR 1=1 --"]


def _typed_4xx(r: httpx.Response) -> bool:
    return 400 <= r.status_code < 500 and is_typed_error(r)


def _safe(text: str) -> str:
    """httpx refuses lone surrogates in forms; send them as their UTF-8-ish bytes would be (replaced)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


async def test_injection_and_huge_strings_in_every_text_field_never_5xx(security_bank: SecurityBank) -> None:
    bank, a = security_bank, security_bank.a
    fives, untyped, accepted_huge = [], [], []
    cases = 0
    async with httpx.AsyncClient(base_url=bank.url, timeout=60, headers=a.auth) as c:
        for op in operations(bank.openapi):
            if op.auth == "network":
                continue
            fields = [(f, "form") for f in form_text_fields(op)] + [
                (p["name"], "query") for p in op.params if p.get("in") == "query"
            ]
            for field, where in fields:
                # A URL's query is limited by clients and servers alike: 60 KB is as far as httpx goes.
                for value in [*INJECTIONS, HUGE if where == "form" else HUGE_QUERY]:
                    request = build(op, a.ids, override={field: _safe(value)})
                    if op.auth == "none":
                        request["headers"]["X-Forwarded-For"] = (
                            f"10.9.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
                        )
                    r = await c.request(**request)
                    cases += 1
                    label = f"{op.label} {where} {field}={value[:30]!r}"
                    if r.status_code >= 500:
                        fives.append(f"{label} -> {r.status_code} {r.text[:200]}")
                    elif (
                        r.status_code >= 400
                        and not is_typed_error(r)
                        and "text/html" not in r.headers.get("content-type", "")
                    ):
                        untyped.append(f"{label} -> {r.status_code} {r.text[:200]}")
                    elif value in (HUGE, HUGE_QUERY) and r.status_code < 400:
                        accepted_huge.append(f"{label} -> {r.status_code}")
    assert cases > 100
    assert not fives, f"{len(fives)} of {cases} answered 5xx:\n" + "\n".join(fives)
    assert not untyped, "\n".join(untyped)
    assert not accepted_huge, "100 KB strings accepted:\n" + "\n".join(accepted_huge)


async def test_injection_and_huge_strings_in_network_messages_never_5xx(security_bank: SecurityBank) -> None:
    a = security_bank.a
    fives = []
    async with httpx.AsyncClient(
        base_url=security_bank.url, timeout=60, headers={"x-network-key": NETWORK_KEY}
    ) as c:
        base = authorisation(a, amount=1)
        paths = [
            ("network_transaction_id",),
            ("stan",),
            ("rrn",),
            ("pan",),
            ("expiry",),
            ("cvc",),
            ("processing_code",),
            ("merchant", "name"),
            ("merchant", "city"),
            ("merchant", "id"),
            ("merchant", "mcc"),
            ("merchant", "country"),
            ("currency",),
        ]
        for path in paths:
            for value in [*INJECTIONS[:4], HUGE]:
                msg = copy.deepcopy(base)
                msg["network_transaction_id"] = f"INJ{secrets.token_hex(6)}"
                target = msg
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = value
                r = await c.post("/network/authorisations", json=msg)
                if r.status_code >= 500 or (r.status_code >= 400 and not is_typed_error(r)):
                    fives.append(f"{'.'.join(path)}={value[:30]!r} -> {r.status_code} {r.text[:200]}")
                elif value is HUGE and r.status_code == 200 and r.json().get("response_code") == "00":
                    fives.append(f"{'.'.join(path)} of 100 KB approved")
    assert not fives, "\n".join(fives)


async def test_oversized_bodies_get_413(security_bank: SecurityBank) -> None:
    a = security_bank.a
    big = b"account_id=" + b"A" * (2 * 1024 * 1024)

    async def chunks():  # no Content-Length: the gateway must count what it reads
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    async with httpx.AsyncClient(base_url=security_bank.url, timeout=60) as c:
        form = {
            "Content-Type": "application/x-www-form-urlencoded",
            **a.auth,
            "Idempotency-Key": uuid.uuid4().hex,
        }
        for body in (big, chunks()):
            r = await c.post("/topup", content=body, headers=form)
            assert r.status_code == 413 and r.json()["code"].startswith("payload_too_large"), r.text[:300]
        msg = json.dumps({**authorisation(a), "padding": "x" * (3 * 1024 * 1024)})
        r = await c.post(
            "/network/authorisations",
            content=msg,
            headers={"x-network-key": NETWORK_KEY, "Content-Type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["code"].startswith("payload_too_large"), r.text[:300]


@pytest.mark.parametrize(
    "body",
    [
        b"%%%",
        b"account_id=%zz&amount=%",
        b"amount=1&amount=2&currency=GBP&account_id=",
        b"\xff\xfe\x00=\x00",
        b"=&=&=",
        b'{"account_id": "acc_1", "amount": 100, "currency": "GBP"}',
        b"a" * 5000,
    ],
)
async def test_malformed_form_bodies_get_400(security_bank: SecurityBank, body: bytes) -> None:
    a = security_bank.a
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30, headers=a.auth) as c:
        for path in ("/topup", "/cards", "/webhooks", "/devices"):
            r = await c.post(
                path,
                content=body,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Idempotency-Key": uuid.uuid4().hex,
                },
            )
            assert r.status_code in (400, 404) and _typed_4xx(r), (
                f"{path} {body[:40]!r} -> {r.status_code} {r.text}"
            )


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"mti": "0100",}',
        b"[]",
        b"null",
        b'"0100"',
        b"\xff\xfe",
        b'{"amount": 1e999}',
        b'{"mti": "0100", "amount": NaN}',
        b"{" * 10_000 + b"}" * 10_000,
        b"",
    ],
)
async def test_malformed_json_network_messages_get_400(security_bank: SecurityBank, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30) as c:
        for path in (
            "/network/authorisations",
            "/network/advices",
            "/network/reversals",
            "/network/clearing",
        ):
            r = await c.post(
                path, content=body, headers={"x-network-key": NETWORK_KEY, "Content-Type": "application/json"}
            )
            assert r.status_code == 400 and _typed_4xx(r), f"{path} {body[:40]!r} -> {r.status_code} {r.text}"


async def test_bad_amounts_and_currencies_on_topup_get_typed_400(security_bank: SecurityBank) -> None:
    a = security_bank.a
    wrong = []
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30, headers=a.auth) as c:
        before = (await c.get("/balance", params={"account_id": a.account_id})).json()["total_balance"]
        for amount, currency in [(x, "GBP") for x in BAD_AMOUNTS] + [("100", x) for x in BAD_CURRENCIES]:
            r = await c.post(
                "/topup",
                data={"account_id": a.account_id, "amount": amount, "currency": currency},
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            if r.status_code != 400 or not r.json().get("code", "").startswith("bad_request."):
                wrong.append(f"amount={amount!r} currency={currency!r} -> {r.status_code} {r.text[:200]}")
        after = (await c.get("/balance", params={"account_id": a.account_id})).json()["total_balance"]
    assert not wrong, "\n".join(wrong)
    assert after == before, "a refused top-up moved money"


async def test_bad_amounts_and_currencies_in_network_messages_get_typed_400(
    security_bank: SecurityBank,
) -> None:
    a = security_bank.a
    amounts: list[object] = [
        -1,
        0,
        1.5,
        0.01,
        2**63,
        2**64,
        10**30,
        "1e3",
        "100",
        "NaN",
        "abc",
        None,
        True,
        [1],
        {},
    ]
    wrong = []
    async with httpx.AsyncClient(
        base_url=security_bank.url, timeout=30, headers={"x-network-key": NETWORK_KEY}
    ) as c:
        for amount in amounts:
            r = await c.post("/network/authorisations", json=authorisation(a, amount=amount))  # type: ignore[arg-type]
            if r.status_code != 400 or not r.json().get("code", "").startswith("bad_request."):
                wrong.append(f"0100 amount={amount!r} -> {r.status_code} {r.text[:200]}")
            reversal = {
                **authorisation(a),
                "mti": "0400",
                "replacement_amount": amount,
                "original_amount": 100,
            }
            r = await c.post("/network/reversals", json=reversal)
            if r.status_code >= 500 or (r.status_code == 200 and amount in (-1, 1.5, 2**63, "abc")):
                wrong.append(f"0400 replacement_amount={amount!r} -> {r.status_code} {r.text[:200]}")
        for raw in (b"1e3", b"NaN", b"Infinity", b"-0", b"1.0"):
            text = json.dumps(authorisation(a, amount=424242)).replace("424242", raw.decode())
            r = await c.post(
                "/network/authorisations", content=text, headers={"Content-Type": "application/json"}
            )
            if r.status_code != 400 or not _typed_4xx(r):
                wrong.append(f"0100 amount literal {raw!r} -> {r.status_code} {r.text[:200]}")
        for currency in ["XXX", "ZZZ", "gbp", "", "GBPP", "826", 826]:
            r = await c.post("/network/authorisations", json=authorisation(a, currency=currency))
            ok = r.status_code == 400 and _typed_4xx(r)
            declined = r.status_code == 200 and r.json().get("response_code") not in ("00", None)
            if not (ok or declined):  # a well-formed but unsupported currency may be a network decline
                wrong.append(f"0100 currency={currency!r} -> {r.status_code} {r.text[:200]}")
    assert not wrong, "\n".join(wrong)


async def test_idempotency_key_replays(security_bank: SecurityBank) -> None:
    a = security_bank.a
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30, headers=a.auth) as c:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        form = {"account_id": a.account_id, "amount": "700", "currency": "GBP"}
        first = await c.post("/topup", data=form, headers=key)
        assert first.status_code == 201, first.text
        again = await c.post("/topup", data=form, headers=key)
        assert (again.status_code, again.json()) == (first.status_code, first.json())
        for changed in (
            {**form, "amount": "701"},
            {**form, "currency": "EUR"},
            {**form, "account_id": security_bank.b.account_id},
        ):
            r = await c.post("/topup", data=changed, headers=key)
            assert r.status_code in (409, 422) and _typed_4xx(r), f"{changed} -> {r.status_code} {r.text}"
        # The same key from another customer is another customer's key: not the first answer.
        r = await c.post(
            "/topup",
            data={**form, "account_id": security_bank.b.account_id},
            headers={**key, **security_bank.b.auth},
        )
        assert r.status_code == 201 and r.json() != first.json(), r.text
        # Concurrent replays of one new key: one top-up, every answer the same.
        key = {"Idempotency-Key": uuid.uuid4().hex}
        before = (await c.get("/balance", params={"account_id": a.account_id})).json()["total_balance"]
        answers = await asyncio.gather(*(c.post("/topup", data=form, headers=key) for _ in range(8)))
        assert {r.status_code for r in answers} <= {201, 409}, [r.text for r in answers]
        after = (await c.get("/balance", params={"account_id": a.account_id})).json()["total_balance"]
        assert after - before == 700
        # Cards: a repeated issue gives the same card and never the number again.
        card_key = {"Idempotency-Key": uuid.uuid4().hex}
        one = await c.post("/cards", data={"account_id": a.account_id}, headers=card_key)
        two = await c.post("/cards", data={"account_id": a.account_id}, headers=card_key)
        assert one.status_code == 201 and two.status_code == 200, two.text
        assert two.json()["card"]["id"] == one.json()["card"]["id"] and "pan" not in two.json()["card"]
        ISSUED.append((one.json()["card"]["pan"], one.json()["card"]["cvc"]))


async def test_replayed_network_messages(security_bank: SecurityBank) -> None:
    a = security_bank.a
    async with httpx.AsyncClient(
        base_url=security_bank.url, timeout=30, headers={"x-network-key": NETWORK_KEY}
    ) as c:
        msg = authorisation(a, amount=321)
        first = await c.post("/network/authorisations", json=msg)
        assert first.json()["response_code"] == "00", first.text
        replays = await asyncio.gather(*(c.post("/network/authorisations", json=msg) for _ in range(5)))
        assert all(r.json() == first.json() for r in replays), [r.text for r in replays]
        # The message's identity is its money: card, amount, currency, processing code, merchant id and
        # MCC (services/cards/authorise.py request_digest). A retransmission may differ in STAN or name.
        b = security_bank.b
        for change in (
            {"amount": 322},
            {"merchant": {**msg["merchant"], "id": "ELSEWHERE1"}},
            {"merchant": {**msg["merchant"], "mcc": "7995"}},
            {"processing_code": "010000"},
            {"pan": b.pan, "cvc": b.cvc, "expiry": b.expiry},
        ):
            r = await c.post("/network/authorisations", json={**msg, **change})
            assert r.status_code == 200 and r.json()["response_code"] == "94", f"{change}: {r.text}"
        reversal = {
            "mti": "0400",
            "network_transaction_id": msg["network_transaction_id"],
            "pan": a.pan,
            "amount": 321,
            "original_amount": 321,
            "currency": "GBP",
            "stan": msg["stan"],
            "rrn": msg["rrn"],
            "transmission_time": msg["transmission_time"],
            "merchant": msg["merchant"],
        }
        # The network repeats a reversal it got no answer to, possibly while the first is in flight.
        answers = await asyncio.gather(*(c.post("/network/reversals", json=reversal) for _ in range(6)))
        assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
        assert all(r.json() == answers[0].json() for r in answers), [r.text for r in answers]
    # One hold, however many times the message came.
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=30, headers=a.auth) as c:
        assert (await c.get("/balance", params={"account_id": a.account_id})).status_code == 200


async def test_a_sign_in_flood_from_one_client_leaves_other_clients_served(
    security_bank: SecurityBank,
) -> None:
    """The gateway's "auth" class (per client IP, shipped limits): a password-guessing flood is refused
    with typed 429s and Retry-After, while another client signs in as if nothing happened."""
    a = security_bank.a
    attacker = {"X-Forwarded-For": f"203.0.113.{secrets.randbelow(250)}"}
    customer = {"X-Forwarded-For": f"198.51.100.{secrets.randbelow(250)}"}
    guess = {"grant_type": "password", "client_id": "oauthclient_mondo_app", "username": a.email}
    real = {**guess, "password": a.password}
    async with httpx.AsyncClient(base_url=security_bank.url, timeout=60) as c:
        flood = [
            c.post("/oauth2/token", data={**guess, "password": f"guess-{i}"}, headers=attacker)
            for i in range(120)
        ]
        served = [c.post("/oauth2/token", data=real, headers=customer) for _ in range(5)]
        answers = await asyncio.gather(*flood, *served)
    flood_answers, customer_answers = answers[:120], answers[120:]
    limited = [r for r in flood_answers if r.status_code == 429]
    assert limited, "no 429 in a flood of 120 sign-ins from one client"
    assert all(
        r.json()["code"].startswith("rate_limited") and int(r.headers["retry-after"]) >= 1 for r in limited
    )
    assert {r.status_code for r in flood_answers} <= {401, 400, 429}, {r.status_code for r in flood_answers}
    assert [r.status_code for r in customer_answers] == [200] * 5, [r.text for r in customer_answers]
