"""The Mondo transactions API over a real socket: every parameter, good and bad, and owner isolation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.transactions.conftest import Service
from tests.transactions.events import Authorisation, account_created, at, topup

ACC, USER = "acc_ada", "user_ada"
OTHER_ACC, OTHER = "acc_bob", "user_bob"

# Today's full Monzo transaction object (docs.monzo.com), plus the bank's `reversed` flag and `receipts`.
TRANSACTION_KEYS = {
    "id", "created", "description", "amount", "fees", "currency", "merchant", "notes", "metadata", "labels",
    "attachments", "international", "category", "categories", "is_load", "settled", "local_amount",
    "local_currency", "updated", "account_id", "user_id", "counterparty", "scheme", "dedupe_id", "originator",
    "include_in_spending", "can_be_excluded_from_breakdown", "can_be_made_subscription", "can_split_the_bill",
    "can_add_to_tab", "can_match_transactions_in_categorization", "amount_is_pending", "atm_fees_detailed",
    "parent_account_id", "account_balance", "reversed", "receipts",
}  # fmt: skip
MERCHANT_KEYS = {
    "id", "group_id", "created", "name", "logo", "emoji", "category", "online", "atm", "address", "updated",
    "metadata", "disable_feedback",
}  # fmt: skip
ADDRESS_KEYS = {
    "short_formatted", "formatted", "address", "city", "region", "country", "postcode", "latitude",
    "longitude", "zoom_level", "approximate",
}  # fmt: skip


async def list_of(service: Service, user: str = USER, **params: Any) -> list[dict[str, Any]]:
    r = await service.get("/transactions", user, **params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["transactions"]
    return items


async def one_payment(service: Service) -> dict[str, Any]:
    auth = Authorisation(ACC, 1_915)
    await service.feed.apply(account_created(ACC, USER), topup(ACC, 5_000, 5_000, at(0)))
    await service.feed.apply(auth.hold(3_085, at(1)), auth.approved(at(1)))
    [_, payment] = await list_of(service, account_id=ACC)
    return payment


async def test_a_transaction_has_todays_full_shape(service: Service) -> None:
    payment = await one_payment(service)
    assert set(payment) == TRANSACTION_KEYS
    assert payment["merchant"].startswith("merch_")
    r = await service.get(f"/transactions/{payment['id']}", USER, **{"expand[]": "merchant"})
    assert r.status_code == 200
    tx = r.json()["transaction"]
    assert set(tx) == TRANSACTION_KEYS and set(tx["merchant"]) == MERCHANT_KEYS
    assert set(tx["merchant"]["address"]) == ADDRESS_KEYS
    expected = {
        "amount": -1_915, "currency": "GBP", "local_amount": -1_915, "local_currency": "GBP", "settled": "",
        "is_load": False, "notes": "", "metadata": {}, "fees": {}, "counterparty": {},
        "category": "eating_out", "categories": {"eating_out": -1_915}, "scheme": "mastercard",
        "account_id": ACC, "user_id": USER,
        "amount_is_pending": True, "account_balance": 3_085, "atm_fees_detailed": None, "originator": False,
        "include_in_spending": True, "can_split_the_bill": True, "can_add_to_tab": True,
        "can_be_made_subscription": False, "parent_account_id": "", "labels": None, "attachments": None,
    }  # fmt: skip
    assert {k: tx[k] for k in expected} == expected
    assert tx["created"] == "2026-11-26T08:16:00.000Z" and tx["id"].startswith("tx_")
    assert tx["merchant"]["name"] == "Brightbird Espresso" and tx["merchant"]["emoji"] == "☕"
    without = await service.get(f"/transactions/{payment['id']}", USER)
    assert without.json()["transaction"]["merchant"] == tx["merchant"]["id"]


async def test_the_event_carries_what_the_api_answers(service: Service) -> None:
    payment = await one_payment(service)
    [event] = [e for e in await service.feed.published("transaction.created") if e["data"]["kind"] != "topup"]
    assert set(event["data"]) == {
        "account_id",
        "user_id",
        "kind",
        "change",
        "version",
        "spend_today",
        "transaction",
    }
    r = await service.get(f"/transactions/{payment['id']}", USER, **{"expand[]": "merchant"})
    assert event["data"]["transaction"] == r.json()["transaction"]
    assert event["subject"] == ACC and event["type"] == "transaction.created"


async def test_pages_in_created_order_with_since_and_before(service: Service) -> None:
    await service.feed.apply(account_created(ACC, USER))
    await service.feed.apply(*(topup(ACC, 100 + i, 1_000 + i, at(i)) for i in range(35)))
    first = await list_of(service, account_id=ACC)
    assert [t["amount"] for t in first] == [100 + i for i in range(30)]  # default limit 30, oldest first
    assert len(await list_of(service, account_id=ACC, limit="100")) == 35
    after = await list_of(service, account_id=ACC, since=first[-1]["id"], limit="3")
    assert [t["amount"] for t in after] == [130, 131, 132]  # a transaction id: the page starts after it
    at_time = await list_of(service, account_id=ACC, since="2026-11-26T08:20:00Z", limit="2")
    assert [t["amount"] for t in at_time] == [105, 106]  # a time: from that time on
    offset = await list_of(service, account_id=ACC, since="2026-11-26T09:20:00+01:00", limit="1")
    assert [t["amount"] for t in offset] == [105]
    before = await list_of(service, account_id=ACC, before="2026-11-26T08:18:00Z")
    assert [t["amount"] for t in before] == [100, 101, 102]
    window = await list_of(
        service, account_id=ACC, since="2026-11-26T08:16:00Z", before="2026-11-26T08:18:00Z"
    )
    assert [t["amount"] for t in window] == [101, 102]
    expanded = await list_of(service, account_id=ACC, limit="1", **{"expand[]": "merchant"})
    assert expanded[0]["merchant"] is None  # top-ups have no merchant


BAD_LIST_PARAMS = [
    ({}, 400, "bad_request.missing_param"),
    ({"account_id": ""}, 400, "bad_request.missing_param"),
    ({"account_id": ACC, "limit": "0"}, 400, "bad_request.bad_param.limit"),
    ({"account_id": ACC, "limit": "101"}, 400, "bad_request.bad_param.limit"),
    ({"account_id": ACC, "limit": "1000"}, 400, "bad_request.bad_param.limit"),
    ({"account_id": ACC, "limit": "-1"}, 400, "bad_request.bad_param.limit"),
    ({"account_id": ACC, "limit": "1.5"}, 400, "bad_request.bad_param.limit"),
    ({"account_id": ACC, "limit": "ten"}, 400, "bad_request.bad_param.limit"),
    ({"account_id": ACC, "since": "yesterday"}, 400, "bad_request.bad_param.since"),
    ({"account_id": ACC, "since": "2026-11-26"}, 400, "bad_request.bad_param.since"),
    ({"account_id": ACC, "since": "2026-11-26T08:00:00"}, 400, "bad_request.bad_param.since"),  # no offset
    ({"account_id": ACC, "since": "2026-13-40T08:00:00Z"}, 400, "bad_request.bad_param.since"),
    ({"account_id": ACC, "since": "tx_"}, 400, "bad_request.bad_param.since"),
    ({"account_id": ACC, "since": "tx_NOSUCHTRANSACTION"}, 400, "bad_request.bad_param.since"),
    ({"account_id": ACC, "before": "tomorrow"}, 400, "bad_request.bad_param.before"),
    ({"account_id": ACC, "before": "tx_0001"}, 400, "bad_request.bad_param.before"),
    ({"account_id": ACC, "expand[]": "account"}, 400, "bad_request.bad_param.expand"),
    ({"account_id": "acc_nobody"}, 404, "not_found.account"),
    ({"account_id": OTHER_ACC}, 403, "forbidden.insufficient_permissions"),
]


@pytest.mark.parametrize(("params", "status", "code"), BAD_LIST_PARAMS)
async def test_bad_list_parameters_are_typed_4xx(
    service: Service, params: dict[str, str], status: int, code: str
) -> None:
    await service.feed.apply(account_created(ACC, USER), account_created(OTHER_ACC, OTHER))
    r = await service.get("/transactions", USER, **params)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["message"]


async def test_a_transaction_id_from_another_account_is_not_a_cursor(service: Service) -> None:
    await service.feed.apply(account_created(ACC, USER), account_created(OTHER_ACC, OTHER))
    await service.feed.apply(topup(OTHER_ACC, 100, 100, at(0)))
    [theirs] = await list_of(service, OTHER, account_id=OTHER_ACC)
    r = await service.get("/transactions", USER, account_id=ACC, since=theirs["id"])
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param.since")


async def test_only_the_owner_sees_or_changes_a_transaction(service: Service) -> None:
    payment = await one_payment(service)
    await service.feed.apply(account_created(OTHER_ACC, OTHER))
    path = f"/transactions/{payment['id']}"
    r = await service.get(path, OTHER)
    assert (r.status_code, r.json()["code"]) == (404, "not_found.transaction")
    r = await service.http.patch(path, data={"metadata[x]": "y"}, headers=service.auth(OTHER))
    assert (r.status_code, r.json()["code"]) == (404, "not_found.transaction")
    r = await service.get("/transactions", OTHER, account_id=ACC)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.insufficient_permissions")
    assert await list_of(service, OTHER, account_id=OTHER_ACC) == []
    r = await service.get("/transactions/tx_0000NOSUCHTHING", USER)
    assert (r.status_code, r.json()["code"]) == (404, "not_found.transaction")
    r = await service.get(path, USER, **{"expand[]": "card"})
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param.expand")


async def test_no_or_bad_token_is_401(service: Service) -> None:
    r = await service.http.get("/transactions", params={"account_id": ACC})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized.bad_access_token.missing")
    r = await service.http.get(
        "/transactions", params={"account_id": ACC}, headers={"Authorization": "Bearer x"}
    )
    assert r.status_code == 401


async def test_patch_sets_and_deletes_metadata_and_notes(service: Service) -> None:
    payment = await one_payment(service)
    path = f"/transactions/{payment['id']}"
    headers = service.auth(USER)
    r = await service.http.patch(
        path, data={"metadata[receipt]": "r-1", "metadata[project]": "bank", "metadata[notes]": "flat white"},
        headers=headers,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    tx = r.json()["transaction"]
    assert tx["metadata"] == {"receipt": "r-1", "project": "bank"} and tx["notes"] == "flat white"
    assert tx["updated"] > payment["updated"]
    r = await service.http.patch(path, data={"metadata[receipt]": "", "metadata[notes]": ""}, headers=headers)
    assert (
        r.json()["transaction"]["metadata"] == {"project": "bank"} and r.json()["transaction"]["notes"] == ""
    )
    r = await service.http.patch(
        path, params={"expand[]": "merchant"}, data={"metadata[a]": "b"}, headers=headers
    )
    assert r.json()["transaction"]["merchant"]["name"] == "Brightbird Espresso"
    updates = [e["data"] for e in await service.feed.published("transaction.updated")]
    assert [(u["change"], u["version"]) for u in updates] == [
        ("annotated", 2),
        ("annotated", 3),
        ("annotated", 4),
    ]
    assert updates[-1]["transaction"]["metadata"] == {"project": "bank", "a": "b"}
    got = await service.get(path, USER)
    assert got.json()["transaction"]["metadata"] == {"project": "bank", "a": "b"}
    # The same values again: nothing changes, nothing is announced.
    await service.http.patch(path, data={"metadata[a]": "b"}, headers=headers)
    assert len(await service.feed.published("transaction.updated")) == 3


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({}, "bad_request.missing_param"),
        ({"notes": "x"}, "bad_request.bad_param.metadata"),
        ({"metadata": "x"}, "bad_request.bad_param.metadata"),
        ({"metadata[]": "x"}, "bad_request.bad_param.metadata"),
        ({"metadata[a]": "x" * 2_001}, "bad_request.bad_param.metadata"),
    ],
)
async def test_bad_patches_are_typed_400s(service: Service, form: dict[str, str], code: str) -> None:
    payment = await one_payment(service)
    r = await service.http.patch(f"/transactions/{payment['id']}", data=form, headers=service.auth(USER))
    assert (r.status_code, r.json()["code"]) == (400, code), r.text
