"""The notifications service end to end: events in (through the outbox, relay and transport), pushes out
to the fake APNs/FCM over real sockets; devices and feed items over HTTP."""

from __future__ import annotations

import asyncio
import uuid

from shared.events.envelope import Envelope
from tests.notifications.conftest import WEBHOOKS_TOPIC, Push, WebhookDisabled, eventually

# -- devices ---------------------------------------------------------------------------------------------


async def test_devices_register_list_delete(push: Push) -> None:
    ada, bob = push.customer(), push.customer()
    token = uuid.uuid4().hex * 2
    r = await push.http.post(
        f"{push.url}/devices",
        data={"platform": "apns", "token": token, "app_version": "1.2.0"},
        headers=push.auth(ada),
    )
    assert r.status_code == 201, r.text
    device = r.json()["device"]
    assert (
        device["id"].startswith("device_") and device["active"] is True and device["app_version"] == "1.2.0"
    )
    again = await push.http.post(
        f"{push.url}/devices", data={"platform": "apns", "token": token}, headers=push.auth(ada)
    )
    assert again.status_code == 200 and again.json()["device"]["id"] == device["id"]
    phone = await push.device(ada, "fcm")

    listed = (await push.http.get(f"{push.url}/devices", headers=push.auth(ada))).json()["devices"]
    assert [d["id"] for d in listed] == [device["id"], phone["id"]]
    assert (await push.http.get(f"{push.url}/devices", headers=push.auth(bob))).json() == {"devices": []}

    theirs = await push.http.delete(f"{push.url}/devices/{device['id']}", headers=push.auth(bob))
    assert theirs.status_code == 404 and theirs.json()["code"] == "not_found.device"
    mine = await push.http.delete(f"{push.url}/devices/{device['id']}", headers=push.auth(ada))
    assert mine.status_code == 200 and mine.json() == {}
    listed = (await push.http.get(f"{push.url}/devices", headers=push.auth(ada))).json()["devices"]
    assert [d["id"] for d in listed] == [phone["id"]]


async def test_a_token_registered_by_another_user_moves_to_them(push: Push) -> None:
    ada, bob = push.customer(), push.customer()
    token = uuid.uuid4().hex * 2
    first = await push.device(ada, "apns", token)
    r = await push.http.post(
        f"{push.url}/devices", data={"platform": "apns", "token": token}, headers=push.auth(bob)
    )
    assert r.status_code == 200 and r.json()["device"]["id"] == first["id"]
    assert (await push.http.get(f"{push.url}/devices", headers=push.auth(ada))).json() == {"devices": []}


async def test_device_input_is_checked(push: Push) -> None:
    ada = push.customer()
    cases = [
        ({"platform": "windows", "token": "ab" * 32}, "bad_request.bad_param.platform"),
        ({"platform": "apns", "token": "not hex"}, "bad_request.bad_param.token"),
        ({"platform": "fcm", "token": "short"}, "bad_request.bad_param.token"),
        ({"platform": "apns"}, "bad_request.missing_param"),
        (
            {"platform": "apns", "token": "ab" * 32, "app_version": "9" * 65},
            "bad_request.bad_param.app_version",
        ),
    ]
    for form, code in cases:
        r = await push.http.post(f"{push.url}/devices", data=form, headers=push.auth(ada))
        assert (r.status_code, r.json()["code"]) == (400, code), form
    r = await push.http.get(f"{push.url}/devices")
    assert r.status_code == 401 and r.json()["code"].startswith("unauthorized.bad_access_token")


# -- transactions become pushes --------------------------------------------------------------------------


async def test_a_card_payment_reaches_every_device_of_the_owner(push: Push) -> None:
    ada, bob = push.customer(), push.customer()
    iphone, android = await push.device(ada, "apns"), await push.device(ada, "fcm")
    await push.device(bob, "apns")
    tx = await push.transaction_event(ada)
    await eventually(lambda: len([r for r in push.received() if r.status == 200]) == 2, what="two pushes")
    text = "☕ £19.15 at Brightbird Espresso. You've spent £43.55 today."
    [apns] = push.received(token=iphone["token"])
    [fcm] = push.received(token=android["token"])
    assert (apns.platform, apns.http_version, apns.body, apns.title) == ("apns", "2", text, "Payment")
    assert (fcm.platform, fcm.body) == ("fcm", text)
    assert apns.data["transaction_id"] == fcm.data["transaction_id"] == tx["id"]
    await push.settled()
    rows = await push.deliveries()
    assert {r["status"] for r in rows} == {"sent"} and len(rows) == 2


async def test_each_template_arrives_as_composed(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "apns")
    await push.transaction_event(
        ada, amount=-1200, merchant="Pret A Manger", emoji="🥪", decline_reason="INSUFFICIENT_FUNDS"
    )
    await push.transaction_event(ada, kind="topup", amount=10_000, merchant=None, balance=14_355)
    await push.transaction_event(
        ada, kind="refund", amount=500, merchant="Pret A Manger", emoji="🥪", balance=14_855
    )
    atm = {"amount": -5000, "merchant": "Sainsbury's ATM", "emoji": "", "spend": 9355}
    await push.transaction_event(ada, kind="atm_withdrawal", **atm)
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 4, what="four pushes")
    assert sorted(r.body for r in push.received(token=phone["token"])) == sorted(
        [
            "Your payment of £12.00 at Pret A Manger was declined: insufficient funds",
            "💰 £100.00 top up. Balance £143.55",
            "🥪 £5.00 refund from Pret A Manger. Balance £148.55",
            "🏧 £50.00 cash from Sainsbury's ATM. You've spent £93.55 today.",
        ]
    )


async def test_duplicate_events_make_one_notification(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "apns")
    tx = await push.transaction_event(ada, tx_id="tx_dup1")
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 1, what="the push")
    # The relay re-publishes the same event (a crash between publish and mark) ...
    [row] = await push.rows("SELECT payload FROM transactions.outbox")
    envelope = Envelope.from_json(row["payload"])
    await push.publish_raw(envelope)
    await push.publish_raw(envelope)
    # ... and the producer emits the same transaction version again under a new event id.
    await push.transaction_event(ada, tx_id=tx["id"])
    # A later, different event proves the duplicates have been consumed before we look.
    await push.transaction_event(ada, kind="topup", amount=100, merchant=None)
    await eventually(
        lambda: len(push.received(token=phone["token"], status=200)) == 2, what="the marker push"
    )
    bodies = [r.body for r in push.received(token=phone["token"])]
    assert bodies.count("☕ £19.15 at Brightbird Espresso. You've spent £43.55 today.") == 1
    assert len(await push.deliveries()) == 2


async def test_updates_other_than_reversals_push_nothing(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "fcm")
    await push.transaction_event(ada, change="settled", version=2)
    await push.transaction_event(ada, change="reversed", version=3, amount=-700, merchant="Uber", emoji="🚕")
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 1, what="the reversal")
    assert (
        push.received(token=phone["token"])[0].body
        == "Your payment of £7.00 at Uber was cancelled by the merchant"
    )
    assert len(await push.deliveries()) == 1


# -- provider errors -------------------------------------------------------------------------------------


async def assert_deactivated_and_never_retried(push: Push, platform: str, status: int, reason: str) -> None:
    ada = push.customer()
    dead, alive = await push.device(ada, platform), await push.device(ada, platform)
    push.fake.fake.script(dead["token"], [{"status": status, "reason": reason}])
    await push.transaction_event(ada)
    await eventually(
        lambda: len(push.received(token=alive["token"], status=200)) == 1, what="the good device"
    )
    await eventually(lambda: _device_inactive(push, ada, dead["id"]), what="the device deactivated")
    [row] = await push.deliveries(device_id=dead["id"])
    assert (row["status"], row["attempts"], row["last_status"], row["last_error"]) == (
        "invalid_token",
        1,
        status,
        reason,
    )
    # The next event goes only to the live device; the dead one is never tried again.
    await push.transaction_event(ada, kind="topup", amount=100, merchant=None)
    await eventually(lambda: len(push.received(token=alive["token"], status=200)) == 2, what="the next push")
    assert len(push.received(token=dead["token"])) == 1
    assert len(await push.deliveries(device_id=dead["id"])) == 1
    listed = (await push.http.get(f"{push.url}/devices", headers=push.auth(ada))).json()["devices"]
    assert {d["id"]: (d["active"], d["deactivation_reason"]) for d in listed}[dead["id"]] == (False, reason)


async def _device_inactive(push: Push, who: object, device_id: str) -> bool:
    rows = await push.rows("SELECT active FROM notifications.devices WHERE id = :id", id=device_id)
    return bool(rows) and rows[0]["active"] is False


async def test_apns_unregistered_deactivates_the_device(push: Push) -> None:
    await assert_deactivated_and_never_retried(push, "apns", 410, "Unregistered")


async def test_apns_bad_device_token_deactivates_the_device(push: Push) -> None:
    await assert_deactivated_and_never_retried(push, "apns", 400, "BadDeviceToken")


async def test_fcm_unregistered_deactivates_the_device(push: Push) -> None:
    await assert_deactivated_and_never_retried(push, "fcm", 404, "UNREGISTERED")


async def test_fcm_invalid_argument_deactivates_the_device(push: Push) -> None:
    await assert_deactivated_and_never_retried(push, "fcm", 400, "INVALID_ARGUMENT")


async def test_429_and_5xx_are_retried_until_sent(push: Push) -> None:
    ada = push.customer()
    iphone, android = await push.device(ada, "apns"), await push.device(ada, "fcm")
    push.fake.fake.script(iphone["token"], [{"status": 429, "retry_after": 1}, {"status": 503}])
    push.fake.fake.script(android["token"], [{"status": 500}, {"status": 429, "retry_after": 1}])
    await push.transaction_event(ada)
    await eventually(lambda: len(push.received(status=200)) == 2, what="both pushes, eventually")
    assert [r.status for r in push.received(token=iphone["token"])] == [429, 503, 200]
    assert [r.status for r in push.received(token=android["token"])] == [500, 429, 200]
    assert len({r.push_id for r in push.received(token=iphone["token"])}) == 1  # same apns-id every time
    await push.settled()
    rows = await push.deliveries()
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 3), ("sent", 3)]


async def test_a_push_that_keeps_failing_is_given_up(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "apns")
    push.fake.fake.script(phone["token"], [{"status": 503}] * 10)
    await push.transaction_event(ada)
    await eventually(lambda: _delivery_status(push, "failed"), what="the delivery given up")
    assert len(push.received(token=phone["token"])) == push.settings.max_attempts
    [row] = await push.deliveries()
    assert row["attempts"] == push.settings.max_attempts and row["last_status"] == 503
    rows = await push.rows("SELECT active FROM notifications.devices WHERE id = :id", id=phone["id"])
    assert rows[0]["active"] is True  # an outage is not the device's fault


async def _delivery_status(push: Push, status: str) -> bool:
    return any(r["status"] == status for r in await push.deliveries())


# -- restarts and replicas -------------------------------------------------------------------------------


async def test_restart_mid_send_sends_once_after_restart(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "apns")
    push.fake.fake.script(phone["token"], [{"status": 200, "delay": 3600}])  # the provider hangs
    await push.transaction_event(ada)
    await eventually(lambda: len(push.received(token=phone["token"])) == 1, what="the send in flight")
    await push.stop()  # mid-send: the worker is cancelled before the answer, its claim rolls back
    [held] = push.received(token=phone["token"])
    assert held.status is None
    [row] = await push.deliveries()
    assert (row["status"], row["attempts"]) == ("pending", 0)

    await push.start()
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 1, what="the resend")
    await push.settled()
    [row] = await push.deliveries()
    assert (row["status"], row["attempts"]) == ("sent", 1)
    sends = push.received(token=phone["token"])
    assert len(sends) == 2 and sends[1].status == 200
    # Both attempts carry the same apns-id and collapse id: a phone that did get the first shows one.
    assert {r.headers["apns-collapse-id"] for r in sends} == {str(row["push_id"])}
    await push.transaction_event(ada, kind="topup", amount=100, merchant=None)
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 2, what="a later push")
    assert len(push.received(token=phone["token"])) == 3


async def test_events_queued_while_the_service_is_down_are_sent_once_when_it_is_back(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "fcm")
    await push.stop()
    for _ in range(3):
        await push.transaction_event(ada)
    await push.start()
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) >= 3, what="three pushes")
    await push.transaction_event(ada, kind="topup", amount=100, merchant=None)
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 4, what="the marker")
    assert len(push.received(token=phone["token"])) == 4
    assert len({r.push_id for r in push.received(token=phone["token"])}) == 4


async def test_two_replicas_send_each_push_once(push: Push) -> None:
    second = await push.start()  # push.server is now the second replica; keep both running
    try:
        customers = [push.customer() for _ in range(5)]
        phones = [await push.device(c, "apns") for c in customers]
        await asyncio.gather(*(push.transaction_event(c) for c in customers for _ in range(4)))
        await eventually(lambda: len(push.received(status=200)) == 20, what="twenty pushes")
        await push.transaction_event(customers[0], kind="topup", amount=100, merchant=None)
        await eventually(lambda: len(push.received(status=200)) == 21, what="the marker")
        assert len(push.received()) == 21
        assert len({r.push_id for r in push.received()}) == 21
        assert {r.token for r in push.received()} == {p["token"] for p in phones}
    finally:
        await second.stop()


# -- the feed --------------------------------------------------------------------------------------------


async def test_post_feed_stores_and_pushes(push: Push) -> None:
    ada = push.customer()
    phone = await push.device(ada, "apns")
    form = {
        "account_id": ada.account_id,
        "type": "basic",
        "url": "https://www.example.com/a_page_to_open_on_tap.html",
        "params[title]": "My custom item",
        "params[image_url]": "https://www.example.com/image.png",
        "params[background_color]": "#FCF1EE",
        "params[body_color]": "#FCF1EE",
        "params[title_color]": "#333333",
        "params[body]": "Some body text to display",
    }
    r = await push.http.post(f"{push.url}/feed", data=form, headers=push.auth(ada))
    assert (r.status_code, r.json()) == (200, {})
    await eventually(lambda: len(push.received(token=phone["token"], status=200)) == 1, what="the push")
    [got] = push.received(token=phone["token"])
    assert (got.title, got.body) == ("My custom item", "Some body text to display")
    assert got.data["url"] == form["url"]

    r = await push.http.get(f"{push.url}/feed", params={"account_id": ada.account_id}, headers=push.auth(ada))
    [item] = r.json()["feed_items"]
    assert item["id"] == got.data["feed_item_id"] and item["type"] == "basic" and item["url"] == form["url"]
    assert item["params"] == {
        "title": "My custom item",
        "body": "Some body text to display",
        "image_url": "https://www.example.com/image.png",
        "background_color": "#FCF1EE",
        "title_color": "#333333",
        "body_color": "#FCF1EE",
    }


async def test_feed_is_for_the_owner_only(push: Push) -> None:
    ada, bob = push.customer(), push.customer()
    form = {
        "account_id": ada.account_id,
        "type": "basic",
        "params[title]": "Hi",
        "params[image_url]": "https://example.com/i.png",
    }
    r = await push.http.post(f"{push.url}/feed", data=form, headers=push.auth(bob))
    assert (r.status_code, r.json()["code"]) == (403, "forbidden.insufficient_permissions")
    r = await push.http.get(f"{push.url}/feed", params={"account_id": ada.account_id}, headers=push.auth(bob))
    assert r.status_code == 403
    r = await push.http.get(f"{push.url}/feed", params={"account_id": "acc_nope"}, headers=push.auth(bob))
    assert (r.status_code, r.json()["code"]) == (404, "not_found.account")
    assert await push.rows("SELECT * FROM notifications.feed_items") == []


async def test_feed_input_is_checked(push: Push) -> None:
    ada = push.customer()
    good = {
        "account_id": ada.account_id,
        "type": "basic",
        "params[title]": "Hi",
        "params[image_url]": "https://example.com/i.png",
    }
    cases = [
        ({k: v for k, v in good.items() if k != "params[title]"}, "bad_request.missing_param"),
        ({k: v for k, v in good.items() if k != "account_id"}, "bad_request.missing_param"),
        ({k: v for k, v in good.items() if k != "params[image_url]"}, "bad_request.missing_param"),
        ({**good, "type": "fancy"}, "bad_request.bad_param.type"),
        ({**good, "url": "javascript:alert(1)"}, "bad_request.bad_param.url"),
        ({**good, "params[image_url]": "ftp://x/y.png"}, "bad_request.bad_param.url"),
        ({**good, "params[background_color]": "red"}, "bad_request.bad_param.colour"),
        ({**good, "params[title]": "x" * 300}, "bad_request.bad_param.title"),
    ]
    for form, code in cases:
        r = await push.http.post(f"{push.url}/feed", data=form, headers=push.auth(ada))
        assert (r.status_code, r.json()["code"]) == (400, code), form
    r = await push.http.get(f"{push.url}/feed", headers=push.auth(ada))
    assert (r.status_code, r.json()["code"]) == (400, "bad_request.missing_param")


async def test_a_disabled_webhook_becomes_a_feed_item_and_a_push(push: Push) -> None:
    ada, bob, cy = push.customer(), push.customer(), push.customer()
    ada_phone, bob_phone = await push.device(ada, "apns"), await push.device(bob, "fcm")
    await push.device(cy, "apns")
    fields = {
        "webhook_id": "webhook_1",
        "url": "https://hooks.example.com/x",
        "disabled_at": "2026-11-26T08:00:00Z",
    }
    extra = {"reason": "failing"}  # fields this service does not know are ignored
    event = WebhookDisabled(account_id=ada.account_id, user_id=ada.user_id, **fields, **extra)
    await push.emit(event, ada.account_id, WEBHOOKS_TOPIC)
    # Without user_id: the owner is known from an earlier transaction event (bob), or not at all (cy).
    await push.transaction_event(bob, kind="topup", amount=100, merchant=None)
    await eventually(
        lambda: len(push.received(token=bob_phone["token"], status=200)) == 1, what="bob's top up"
    )
    await push.emit(WebhookDisabled(account_id=bob.account_id, **fields), bob.account_id, WEBHOOKS_TOPIC)
    await push.emit(WebhookDisabled(account_id=cy.account_id, **fields), cy.account_id, WEBHOOKS_TOPIC)
    await eventually(lambda: len(push.received(status=200)) == 3, what="ada's and bob's pushes")
    await eventually(
        lambda: _count(push, "SELECT count(*) AS n FROM notifications.feed_items", 3), what="three feed items"
    )
    [ada_push] = push.received(token=ada_phone["token"])
    assert ada_push.title == "Webhook disabled" and "https://hooks.example.com/x" in ada_push.body
    for who in (ada, cy):
        r = await push.http.get(
            f"{push.url}/feed", params={"account_id": who.account_id}, headers=push.auth(who)
        )
        [item] = r.json()["feed_items"]
        assert item["params"]["title"] == "Webhook disabled"
    assert len(push.received()) == 3  # cy: stored, not pushed


async def _count(push: Push, sql: str, n: int) -> bool:
    return (await push.rows(sql))[0]["n"] == n
