"""The owners' API: Mondo shapes, owner isolation, typed errors (never a 500)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.support.waiting import eventually
from tests.webhooks.conftest import Hooks, Receiver

MakeReceiver = Callable[..., Awaitable[Receiver]]


async def test_register_list_delete_in_mondo_shapes(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada = await hooks.customer()
    receiver = await receivers()
    webhook = await hooks.register(ada, receiver.url)
    assert set(webhook) == {"account_id", "id", "url", "status", "secret"}
    listed = await hooks.http.get("/webhooks", params={"account_id": ada.account_id}, headers=hooks.auth(ada))
    assert listed.status_code == 200
    assert listed.json() == {
        "webhooks": [
            {"account_id": ada.account_id, "id": webhook["id"], "url": receiver.url, "status": "active"}
        ]
    }
    assert webhook["secret"] not in listed.text
    r = await hooks.http.delete(f"/webhooks/{webhook['id']}", headers=hooks.auth(ada))
    assert (r.status_code, r.json()) == (200, {})
    listed = await hooks.http.get("/webhooks", params={"account_id": ada.account_id}, headers=hooks.auth(ada))
    assert listed.json() == {"webhooks": []}
    again = await hooks.http.delete(f"/webhooks/{webhook['id']}", headers=hooks.auth(ada))
    assert (again.status_code, again.json()["code"]) == (404, "not_found.webhook")
    await hooks.producer.emit(ada)  # a deleted webhook gets nothing
    other = await receivers()
    await hooks.register(ada, other.url)
    await hooks.producer.emit(ada)
    await eventually(lambda: len(other.requests) == 1, what="the live webhook's delivery")
    assert receiver.requests == []


async def test_owner_isolation(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada, eve = await hooks.customer(), await hooks.customer("Eve")
    receiver = await receivers()
    webhook = await hooks.register(ada, receiver.url)
    wid, as_eve = webhook["id"], hooks.auth(eve)

    r = await hooks.http.post(
        "/webhooks", data={"account_id": ada.account_id, "url": receiver.url}, headers=as_eve
    )
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.insufficient_permissions")
    r = await hooks.http.get("/webhooks", params={"account_id": ada.account_id}, headers=as_eve)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.insufficient_permissions")
    for method, path in [
        ("DELETE", f"/webhooks/{wid}"),
        ("GET", f"/webhooks/{wid}/secret"),
        ("POST", f"/webhooks/{wid}/secret/rotate"),
        ("GET", f"/webhooks/{wid}/deliveries"),
        ("POST", f"/webhooks/{wid}/deliveries/msg_x/retry"),
        ("POST", f"/webhooks/{wid}/recover?since=2026-01-01T00:00:00Z"),
    ]:
        r = await hooks.http.request(method, path, headers=as_eve)
        assert (r.status_code, r.json()["code"]) == (404, "not_found.webhook"), path
        assert webhook["secret"] not in r.text
    # Eve's own account: her webhooks list is hers alone.
    r = await hooks.http.get("/webhooks", params={"account_id": eve.account_id}, headers=as_eve)
    assert r.json() == {"webhooks": []}
    # Ada's webhook is untouched and only Ada's events reach it.
    await hooks.producer.emit(eve)
    await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) == 1, what="Ada's delivery")
    assert receiver.requests[0].json()["data"]["account_id"] == ada.account_id
    shown = await hooks.http.get(f"/webhooks/{wid}/secret", headers=hooks.auth(ada))
    assert shown.json() == {"secret": webhook["secret"]}


async def test_bad_requests_are_typed(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada = await hooks.customer()
    receiver = await receivers()
    r = await hooks.http.post("/webhooks", data={"account_id": ada.account_id, "url": receiver.url})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized.bad_access_token.missing")
    r = await hooks.http.post("/webhooks", data={"account_id": ada.account_id}, headers=hooks.auth(ada))
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.missing_param")
    r = await hooks.http.post(
        "/webhooks", data={"account_id": "acc_nope", "url": receiver.url}, headers=hooks.auth(ada)
    )
    assert (r.status_code, r.json()["code"]) == (404, "not_found.account")
    r = await hooks.http.get("/webhooks", headers=hooks.auth(ada))
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.missing_param")
    webhook = await hooks.register(ada, receiver.url)
    for since in ("yesterday", ""):
        r = await hooks.http.post(
            f"/webhooks/{webhook['id']}/recover", params={"since": since}, headers=hooks.auth(ada)
        )
        assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param"), since
    r = await hooks.http.post(
        f"/webhooks/{webhook['id']}/secret/rotate", data={"overlap_seconds": "-5"}, headers=hooks.auth(ada)
    )
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param")
    r = await hooks.http.get(f"/webhooks/{webhook['id']}/deliveries?limit=0", headers=hooks.auth(ada))
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param")
    r = await hooks.http.get(f"/webhooks/{webhook['id']}/deliveries?before=soon", headers=hooks.auth(ada))
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.bad_param")
