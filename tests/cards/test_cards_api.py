"""Card holders' API over real sockets: issuing, listing, freeze/unfreeze/cancel, controls, ownership."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import jwt

from services.cards.vault import luhn_valid
from tests.cards.conftest import Bank

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_issuing_a_card_returns_the_pan_and_cvc_once(bank: Bank) -> None:
    ada = await bank.customer()
    r = await bank.http.post("/cards", data={"account_id": ada.account_id}, headers=bank.auth(ada))
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    card = r.json()["card"]
    assert set(card) == {"id", "account_id", "status", "last4", "expiry", "pan", "cvc", "created"}
    assert card["id"].startswith("card_") and card["account_id"] == ada.account_id
    assert card["status"] == "active" and RFC3339.match(card["created"])
    pan = card["pan"]
    assert len(pan) == 16 and pan.startswith("535522") and luhn_valid(pan) and card["last4"] == pan[-4:]
    assert re.fullmatch(r"[0-9]{3}", card["cvc"])
    now = datetime.now(UTC)
    assert card["expiry"] == f"{now.month:02d}/{(now.year + 3) % 100:02d}"

    listed = await bank.http.get("/cards", params={"account_id": ada.account_id}, headers=bank.auth(ada))
    assert listed.status_code == 200
    [seen] = listed.json()["cards"]
    assert "pan" not in seen and "cvc" not in seen and pan not in listed.text
    assert {k: seen[k] for k in ("id", "last4", "expiry", "status")} == {
        k: card[k] for k in ("id", "last4", "expiry", "status")
    }
    assert seen["controls"] == {
        "spend_limit_per_transaction": None,
        "spend_limit_per_day": None,
        "blocked_mccs": [],
        "atm_enabled": True,
    }


async def test_every_card_gets_its_own_number(bank: Bank) -> None:
    ada = await bank.customer()
    cards = await asyncio.gather(*(bank.issue(ada) for _ in range(8)))
    assert len({c["pan"] for c in cards}) == 8 and len({c["id"] for c in cards}) == 8
    listed = await bank.http.get("/cards", params={"account_id": ada.account_id}, headers=bank.auth(ada))
    assert len(listed.json()["cards"]) == 8


async def test_an_idempotency_key_issues_one_card_and_shows_its_number_once(bank: Bank) -> None:
    ada = await bank.customer()
    headers = {**bank.auth(ada), "Idempotency-Key": "card-1"}
    first = await bank.http.post("/cards", data={"account_id": ada.account_id}, headers=headers)
    again = await bank.http.post("/cards", data={"account_id": ada.account_id}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["card"]["id"] == first.json()["card"]["id"]
    assert "pan" not in again.json()["card"] and "cvc" not in again.json()["card"]
    other = await bank.customer()
    r = await bank.http.post(
        "/cards",
        data={"account_id": other.account_id},
        headers={**bank.auth(ada), "Idempotency-Key": "card-1"},
    )
    assert r.status_code == 422 and r.json()["code"] == "unprocessable.idempotency_key_reused"


async def test_only_the_owner_issues_lists_and_controls_cards(bank: Bank) -> None:
    ada, eve = await bank.customer(), await bank.customer(name="Eve")
    card = await bank.issue(ada)
    r = await bank.http.post("/cards", data={"account_id": ada.account_id}, headers=bank.auth(eve))
    assert r.status_code == 403 and r.json()["code"] == "forbidden.insufficient_permissions"
    r = await bank.http.get("/cards", params={"account_id": ada.account_id}, headers=bank.auth(eve))
    assert r.status_code == 403 and "cards" not in r.json()
    for action in ("freeze", "unfreeze", "cancel"):
        r = await bank.http.post(f"/cards/{card['id']}/{action}", headers=bank.auth(eve))
        assert r.status_code == 403, action
    r = await bank.controls(eve, card, atm_enabled="false")
    assert r.status_code == 403
    r = await bank.http.post("/cards", data={"account_id": "acc_nope"}, headers=bank.auth(ada))
    assert r.status_code == 404 and r.json()["code"] == "not_found.account"
    r = await bank.http.post("/cards/card_nope/freeze", headers=bank.auth(ada))
    assert r.status_code == 404 and r.json()["code"] == "not_found.card"


async def test_freeze_unfreeze_and_cancel_which_is_final(bank: Bank) -> None:
    ada = await bank.customer()
    card = await bank.issue(ada)
    for action, status in (
        ("freeze", "frozen"),
        ("freeze", "frozen"),
        ("unfreeze", "active"),
        ("cancel", "cancelled"),
    ):
        r = await bank.http.post(f"/cards/{card['id']}/{action}", headers=bank.auth(ada))
        assert r.status_code == 200 and r.json()["card"]["status"] == status, (action, r.text)
    for action in ("freeze", "unfreeze"):
        r = await bank.http.post(f"/cards/{card['id']}/{action}", headers=bank.auth(ada))
        assert r.status_code == 409 and r.json()["code"] == "conflict.card_cancelled"
    r = await bank.http.post(f"/cards/{card['id']}/cancel", headers=bank.auth(ada))
    assert r.status_code == 200 and r.json()["card"]["status"] == "cancelled"
    assert (await bank.controls(ada, card, atm_enabled="false")).status_code == 409


async def test_controls_change_only_what_is_sent(bank: Bank) -> None:
    ada = await bank.customer()
    card = await bank.issue(ada)
    r = await bank.controls(ada, card, spend_limit_per_transaction="5000", blocked_mccs="7995, 5813,7995")
    assert r.status_code == 200, r.text
    assert r.json()["card"]["controls"] == {
        "spend_limit_per_transaction": 5000,
        "spend_limit_per_day": None,
        "blocked_mccs": ["5813", "7995"],
        "atm_enabled": True,
    }
    r = await bank.controls(ada, card, spend_limit_per_day="20000", atm_enabled="false")
    controls = r.json()["card"]["controls"]
    assert controls["spend_limit_per_transaction"] == 5000 and controls["spend_limit_per_day"] == 20000
    assert controls["atm_enabled"] is False and controls["blocked_mccs"] == ["5813", "7995"]
    r = await bank.controls(ada, card, spend_limit_per_transaction="", blocked_mccs="")
    controls = r.json()["card"]["controls"]
    assert controls["spend_limit_per_transaction"] is None and controls["blocked_mccs"] == []


async def test_bad_controls_are_typed_400s(bank: Bank) -> None:
    ada = await bank.customer()
    card = await bank.issue(ada)
    cases = [
        ({"spend_limit_per_transaction": "12.50"}, "bad_request.bad_param.amount"),
        ({"spend_limit_per_day": "-1"}, "bad_request.bad_param.amount"),
        ({"blocked_mccs": "58x3"}, "bad_request.bad_param.blocked_mccs"),
        ({"atm_enabled": "maybe"}, "bad_request.bad_param.atm_enabled"),
        ({}, "bad_request.missing_param"),
    ]
    for form, code in cases:
        r = await bank.controls(ada, card, **form)
        assert (r.status_code, r.json()["code"]) == (400, code), (form, r.text)


async def test_tokens_are_checked_against_accounts_keys_and_revocations(bank: Bank) -> None:
    ada = await bank.customer()
    r = await bank.http.get("/cards", params={"account_id": ada.account_id})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized.bad_access_token.missing"
    stranger = jwt.encode(
        {"sub": ada.user_id}, "not-our-key-but-long-enough-for-hs256-xxxxxxxx", algorithm="HS256"
    )
    r = await bank.http.get(
        "/cards", params={"account_id": ada.account_id}, headers={"Authorization": f"Bearer {stranger}"}
    )
    assert r.status_code == 401
    token, jti = bank.key.issue(ada.user_id, "oauthclient_test", 3600)
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        await bank.http.get("/cards", params={"account_id": ada.account_id}, headers=headers)
    ).status_code == 200
    bank.revoked[jti] = datetime.now(UTC) + timedelta(hours=1)
    for _ in range(100):  # the poller runs every 50 ms in tests
        r = await bank.http.get("/cards", params={"account_id": ada.account_id}, headers=headers)
        if r.status_code == 401:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized.bad_access_token.evicted"


async def test_a_closed_account_gets_no_card(bank: Bank) -> None:
    ada = await bank.customer()
    async with bank.db.transaction() as session:
        from sqlalchemy import text

        await session.execute(
            text("UPDATE accounts.accounts SET closed = true WHERE id = :id"), {"id": ada.account_id}
        )
    r = await bank.http.post("/cards", data={"account_id": ada.account_id}, headers=bank.auth(ada))
    assert r.status_code == 409 and r.json()["code"] == "conflict.account_closed"


async def test_openapi_documents_the_network_messages(bank: Bank) -> None:
    doc = (await bank.http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    names = ["AuthorisationRequest", "AuthorisationResponse", "AdviceRequest", "ReversalRequest"]
    names += ["ReversalResponse", "Presentment", "ClearingBatch", "ClearingResponse", "Merchant"]
    assert set(names) <= set(schemas)
    request = schemas["AuthorisationRequest"]
    assert {"pan", "expiry", "processing_code", "amount", "currency", "stan", "rrn", "transmission_time",
            "network_transaction_id", "merchant"} <= set(request["required"])  # fmt: skip
    assert schemas["ResponseCode"]["enum"] == ["00", "05", "14", "51", "54", "57", "61", "91", "94"]
    body = doc["paths"]["/network/authorisations"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/AuthorisationRequest"}
    for path in (
        "/network/reversals",
        "/network/advices",
        "/network/clearing",
        "/cards",
        "/cards/{card_id}/freeze",
    ):
        assert path in doc["paths"], path
