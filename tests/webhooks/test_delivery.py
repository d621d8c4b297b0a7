"""Delivery to real receivers on loopback: signatures, retries, 410, timeouts, Retry-After, order,
the per-endpoint cap, redirects, response size, auto-disable, rotation, manual retry and recover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.support.waiting import eventually
from tests.webhooks.conftest import (
    Hooks,
    Received,
    Receiver,
    Reply,
    running_webhooks,
)

MakeReceiver = Callable[..., Awaitable[Receiver]]


def verify(secret: str, request: Received) -> Any:
    """What a receiver does with the `standardwebhooks` package: raises unless the signature is good."""
    return StandardWebhook(secret).verify(request.body, request.headers)


async def test_a_transaction_is_delivered_signed(hooks_on_both: Hooks, receivers: MakeReceiver) -> None:
    hooks = hooks_on_both
    ada = await hooks.customer()
    receiver = await receivers()
    webhook = await hooks.register(ada, receiver.url)
    assert webhook["id"].startswith("webhook_") and webhook["secret"].startswith("whsec_")
    assert (webhook["account_id"], webhook["url"]) == (ada.account_id, receiver.url)

    tx = await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) == 1, what="the delivery")
    [request] = receiver.requests
    assert verify(webhook["secret"], request) == {"type": "transaction.created", "data": tx}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("msg_")

    updated = {**tx, "settled": datetime.now(UTC).isoformat()}
    await hooks.producer.emit(ada, updated, event_type="transaction.updated")
    await eventually(lambda: len(receiver.requests) == 2, what="the update's delivery")
    assert verify(webhook["secret"], receiver.requests[1]) == {"type": "transaction.updated", "data": updated}
    assert receiver.requests[1].webhook_id != request.webhook_id

    await eventually(
        lambda: _all_succeeded(hooks, ada, webhook["id"], 2), what="the history to show both deliveries"
    )
    history = await hooks.deliveries(ada, webhook["id"])
    assert [d["type"] for d in history] == ["transaction.updated", "transaction.created"]
    first = history[1]
    assert first["id"] == request.webhook_id and first["status"] == "succeeded" and first["delivered"]
    [attempt] = first["attempts"]
    assert attempt["status_code"] == 200 and attempt["succeeded"] and attempt["error"] is None
    assert isinstance(attempt["latency_ms"], int) and attempt["latency_ms"] >= 0


async def _all_succeeded(hooks: Hooks, customer: Any, webhook_id: str, count: int) -> bool:
    history = await hooks.deliveries(customer, webhook_id)
    return len(history) == count and all(d["status"] == "succeeded" for d in history)


def failing(times: int, status: int = 500, headers: dict[str, str] | None = None) -> Any:
    async def behaviour(n: int, request: Received) -> Reply:
        if n <= times:
            return status, headers or {}, b"not now"
        return 200, {}, b"ok"

    return behaviour


async def test_a_receiver_failing_three_times_gets_one_logical_delivery(
    hooks: Hooks, receivers: MakeReceiver
) -> None:
    ada = await hooks.customer()
    receiver = await receivers(failing(3))
    webhook = await hooks.register(ada, receiver.url)
    tx = await hooks.producer.emit(ada)
    await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the fourth attempt")

    assert len(receiver.requests) == 4
    assert len({r.webhook_id for r in receiver.requests}) == 1  # stable: receivers de-duplicate by it
    for request in receiver.requests:  # every attempt is signed afresh (its own timestamp)
        assert verify(webhook["secret"], request) == {"type": "transaction.created", "data": tx}
    [delivery] = await hooks.deliveries(ada, webhook["id"])
    assert delivery["id"] == receiver.requests[0].webhook_id
    assert [a["attempt"] for a in delivery["attempts"]] == [1, 2, 3, 4]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500"] * 3 + [None]
    assert await hooks.rows("SELECT failing_since FROM webhooks.webhooks WHERE id = :w", w=webhook["id"]) == [
        {"failing_since": None}
    ]


async def test_retries_are_exhausted_after_the_schedule(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada = await hooks.customer()
    receiver = await receivers(failing(1000, status=502))
    webhook = await hooks.register(ada, receiver.url)
    await hooks.producer.emit(ada)
    await eventually(lambda: _statuses(hooks, webhook["id"], ["failed"]), what="the delivery to be exhausted")
    [delivery] = await hooks.deliveries(ada, webhook["id"])
    assert len(delivery["attempts"]) == 8 == len(receiver.requests)  # at once, then 7 retries
    assert delivery["next_attempt"] is None


async def _statuses(hooks: Hooks, webhook_id: str, expected: list[str]) -> bool:
    return await hooks.delivery_status(webhook_id) == expected


async def test_410_gone_disables_the_webhook(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada = await hooks.customer()
    receiver = await receivers(failing(1000, status=410))
    webhook = await hooks.register(ada, receiver.url)
    await hooks.producer.emit(ada)
    await eventually(lambda: _statuses(hooks, webhook["id"], ["failed"]), what="the delivery to fail")
    assert len(receiver.requests) == 1  # no retry
    listed = await hooks.http.get("/webhooks", params={"account_id": ada.account_id}, headers=hooks.auth(ada))
    [shown] = listed.json()["webhooks"]
    assert (shown["status"], shown["disabled_reason"]) == ("disabled", "gone")
    [event] = await hooks.emitted("webhook.endpoint.disabled")
    assert event["subject"] == ada.account_id
    assert {k: event["data"][k] for k in ("webhook_id", "account_id", "user_id", "reason")} == {
        "webhook_id": webhook["id"],
        "account_id": ada.account_id,
        "user_id": ada.user_id,
        "reason": "gone",
    }
    await hooks.producer.emit(ada)  # a disabled webhook gets nothing more
    second = await receivers()
    other = await hooks.register(ada, second.url)
    await hooks.producer.emit(ada)
    await eventually(lambda: len(second.requests) == 1, what="the other webhook's delivery")
    assert len(receiver.requests) == 1
    assert await hooks.delivery_status(webhook["id"]) == ["failed"]
    assert other["id"] != webhook["id"]


async def test_a_timeout_is_a_failed_attempt_then_retried(
    db: Any, settings: Any, receivers: MakeReceiver
) -> None:
    release = asyncio.Event()

    async def hang_first(n: int, request: Received) -> Reply:
        if n == 1:
            await release.wait()
        return 200, {}, b"ok"

    receiver = await receivers(hang_first)
    try:
        async with running_webhooks(db, settings, timeout_seconds=0.5) as hooks:
            ada = await hooks.customer()
            webhook = await hooks.register(ada, receiver.url)
            await hooks.producer.emit(ada)
            await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the retry")
            [delivery] = await hooks.deliveries(ada, webhook["id"])
            first, second = delivery["attempts"]
            assert first["status_code"] is None and first["error"].startswith("timeout")
            assert second["status_code"] == 200
            assert receiver.requests[0].webhook_id == receiver.requests[1].webhook_id
    finally:
        release.set()


async def test_429_and_503_honour_retry_after(db: Any, settings: Any, receivers: MakeReceiver) -> None:
    # The schedule alone would wait an hour: the retry comes when Retry-After says.
    async def busy(n: int, request: Received) -> Reply:
        if n == 1:
            return 429, {"Retry-After": "1"}, b"slow down"
        if n == 2:
            when = datetime.now(UTC) + timedelta(seconds=2)
            return 503, {"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")}, b"maintenance"
        return 200, {}, b"ok"

    receiver = await receivers(busy)
    async with running_webhooks(db, settings, retry_schedule_seconds=[3600.0] * 7) as hooks:
        ada = await hooks.customer()
        webhook = await hooks.register(ada, receiver.url)
        await hooks.producer.emit(ada)
        await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the retries")
        rows = await hooks.rows(
            "SELECT started_at, status_code FROM webhooks.attempts WHERE webhook_id = :w ORDER BY attempt",
            w=webhook["id"],
        )
        assert [r["status_code"] for r in rows] == [429, 503, 200]
        # Never earlier than asked (a lower bound only: how much later depends on the machine).
        assert rows[1]["started_at"] - rows[0]["started_at"] >= timedelta(seconds=1)
        assert rows[2]["started_at"] - rows[1]["started_at"] >= timedelta(seconds=1)


async def test_one_webhooks_deliveries_go_out_in_event_order(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada = await hooks.customer()
    receiver = await receivers()
    webhook = await hooks.register(ada, receiver.url)
    sent = [await hooks.producer.emit(ada) for _ in range(10)]
    await eventually(lambda: len(receiver.requests) == 10, what="ten deliveries")
    assert [r.json()["data"]["id"] for r in receiver.requests] == [tx["id"] for tx in sent]
    assert receiver.max_in_flight == 1
    assert webhook["id"]


async def test_a_slow_receiver_does_not_starve_the_others(hooks: Hooks, receivers: MakeReceiver) -> None:
    release = asyncio.Event()

    async def stuck(n: int, request: Received) -> Reply:
        await release.wait()
        return 200, {}, b"ok"

    slow, fast = await receivers(stuck), await receivers()
    ada, bob = await hooks.customer(), await hooks.customer("Bob")
    slow_hook = await hooks.register(ada, slow.url)
    await hooks.register(bob, fast.url)
    try:
        for _ in range(5):
            await hooks.producer.emit(ada)
        for _ in range(5):
            await hooks.producer.emit(bob)
        await eventually(lambda: len(fast.requests) == 5, what="the fast receiver's deliveries")
        assert len(slow.requests) == 1 and slow.max_in_flight == 1  # per-endpoint cap: 1
    finally:
        release.set()
    await eventually(lambda: _all_succeeded(hooks, ada, slow_hook["id"], 5), what="the slow receiver's")


async def test_redirects_are_not_followed(hooks: Hooks, receivers: MakeReceiver) -> None:
    target = await receivers()

    async def redirect(n: int, request: Received) -> Reply:
        return 307, {"Location": target.url}, b""

    receiver = await receivers(redirect)
    ada = await hooks.customer()
    webhook = await hooks.register(ada, receiver.url)
    await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) >= 2, what="a retry after the redirect")
    assert target.requests == []
    [delivery] = await hooks.deliveries(ada, webhook["id"])
    assert delivery["attempts"][0]["status_code"] == 307 and not delivery["attempts"][0]["succeeded"]


async def test_at_most_64_kib_of_the_answer_is_read(hooks: Hooks, receivers: MakeReceiver) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 640 MB if anyone read it all
            yield b"x" * 65_536

    async def huge(n: int, request: Received) -> Reply:
        return 200, {}, endless()

    receiver = await receivers(huge)
    ada = await hooks.customer()
    webhook = await hooks.register(ada, receiver.url)
    await hooks.producer.emit(ada)
    await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the delivery")
    rows = await hooks.rows(
        "SELECT response_body FROM webhooks.attempts WHERE webhook_id = :w", w=webhook["id"]
    )
    assert rows[0]["response_body"] == "x" * 1024


async def test_an_endpoint_failing_too_long_is_disabled_and_its_owner_told(
    db: Any, settings: Any, receivers: MakeReceiver
) -> None:
    # WEBHOOKS_DISABLE_AFTER_SECONDS is 5 days; 0 here: the first failure is "too long".
    receiver = await receivers(failing(1000))
    async with running_webhooks(db, settings, disable_after_seconds=0) as hooks:
        ada = await hooks.customer()
        webhook = await hooks.register(ada, receiver.url)
        await hooks.producer.emit(ada)
        await eventually(
            lambda: _statuses(hooks, webhook["id"], ["failed"]), what="the webhook to be disabled"
        )
        [row] = await hooks.rows(
            "SELECT status, disabled_reason FROM webhooks.webhooks WHERE id = :w", w=webhook["id"]
        )
        assert row == {"status": "disabled", "disabled_reason": "failing"}
        [event] = await hooks.emitted("webhook.endpoint.disabled")
        assert event["type"] == "webhook.endpoint.disabled" and event["subject"] == ada.account_id
        assert event["data"]["reason"] == "failing" and event["data"]["failing_since"]
        assert event["data"]["user_id"] == ada.user_id and event["data"]["url"] == receiver.url
        # Recovering re-enables it and re-sends what failed.
        receiver.behaviour = failing(0)
        since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        r = await hooks.http.post(
            f"/webhooks/{webhook['id']}/recover", params={"since": since}, headers=hooks.auth(ada)
        )
        assert r.status_code == 200 and r.json() == {"recovered": 1}
        await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the recovered delivery")
        [row] = await hooks.rows("SELECT status FROM webhooks.webhooks WHERE id = :w", w=webhook["id"])
        assert row["status"] == "active"


async def test_a_failed_delivery_can_be_retried_by_hand(
    db: Any, settings: Any, receivers: MakeReceiver
) -> None:
    receiver = await receivers(failing(1000))
    async with running_webhooks(db, settings, retry_schedule_seconds=[0.05]) as hooks:
        ada = await hooks.customer()
        webhook = await hooks.register(ada, receiver.url)
        await hooks.producer.emit(ada)
        await eventually(lambda: _statuses(hooks, webhook["id"], ["failed"]), what="exhaustion")
        [delivery] = await hooks.deliveries(ada, webhook["id"])
        assert len(delivery["attempts"]) == 2
        receiver.behaviour = failing(0)
        r = await hooks.http.post(
            f"/webhooks/{webhook['id']}/deliveries/{delivery['id']}/retry", headers=hooks.auth(ada)
        )
        assert r.status_code == 200, r.text
        assert r.json()["delivery"]["status"] == "pending"
        await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the manual retry")
        [delivery] = await hooks.deliveries(ada, webhook["id"])
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
        assert len({r.webhook_id for r in receiver.requests}) == 1
        missing = await hooks.http.post(
            f"/webhooks/{webhook['id']}/deliveries/msg_nope/retry", headers=hooks.auth(ada)
        )
        assert missing.status_code == 404 and missing.json()["code"] == "not_found.delivery"


async def test_a_rotated_secret_signs_beside_the_old_one_for_the_overlap(
    hooks: Hooks, receivers: MakeReceiver
) -> None:
    ada = await hooks.customer()
    receiver = await receivers()
    webhook = await hooks.register(ada, receiver.url)
    old = webhook["secret"]
    r = await hooks.http.post(f"/webhooks/{webhook['id']}/secret/rotate", headers=hooks.auth(ada))
    assert r.status_code == 200, r.text
    rotated = r.json()
    new = rotated["secret"]
    assert new != old and rotated["previous_secret"] == old and rotated["previous_secret_expires"]
    shown = await hooks.http.get(f"/webhooks/{webhook['id']}/secret", headers=hooks.auth(ada))
    assert shown.json()["secret"] == new and shown.headers["cache-control"] == "no-store"

    await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) == 1, what="the delivery")
    request = receiver.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify(old, request)
    verify(new, request)

    r = await hooks.http.post(
        f"/webhooks/{webhook['id']}/secret/rotate", data={"overlap_seconds": "0"}, headers=hooks.auth(ada)
    )
    newest = r.json()["secret"]
    assert "previous_secret" not in r.json()
    await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) == 2, what="the next delivery")
    assert len(receiver.requests[1].headers["webhook-signature"].split(" ")) == 1
    verify(newest, receiver.requests[1])


async def test_a_redelivered_event_is_delivered_once(hooks: Hooks, receivers: MakeReceiver) -> None:
    ada = await hooks.customer()
    receiver = await receivers()
    webhook = await hooks.register(ada, receiver.url)
    await hooks.producer.emit(ada)
    # The relay crashed after publishing and before marking: it publishes the same event again.
    await hooks.db.engine.dispose()
    async with hooks.db.transaction() as session:
        from sqlalchemy import text

        await session.execute(text("UPDATE transactions.outbox SET published_at = NULL"))
    await hooks.producer.relay.drain()
    await hooks.producer.emit(ada)
    await eventually(lambda: len(receiver.requests) == 2, what="two deliveries")
    await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 2), what="both recorded")
    assert len(receiver.requests) == 2


async def test_a_slow_recorder_does_not_get_a_delivery_sent_twice(
    db: Any, settings: Any, receivers: MakeReceiver
) -> None:
    # A lease of 0.5 s (timeout 0.5 s, no grace) and outcomes recorded 2 s late (a starved recorder): the
    # process renews what it holds, so no claim takes the delivery back and sends it again.
    receiver = await receivers()
    async with running_webhooks(db, settings, timeout_seconds=0.5, lease_grace_seconds=0.0) as hooks:
        deliverer = hooks.service.app.state.deliverer
        write = deliverer.write

        async def slow_write(results: Any) -> None:
            await asyncio.sleep(2.0)
            await write(results)

        deliverer.write = slow_write
        ada = await hooks.customer()
        webhook = await hooks.register(ada, receiver.url)
        await hooks.producer.emit(ada)
        await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 1), what="the delivery")
        await asyncio.sleep(1.0)  # a re-send would come within a lease or two
        assert len(receiver.requests) == 1
        [delivery] = await hooks.deliveries(ada, webhook["id"])
        assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 200)]


async def test_connections_are_kept_alive_and_a_closed_one_is_replaced(
    hooks: Hooks, receivers: MakeReceiver
) -> None:
    receiver = await receivers()
    ada = await hooks.customer()
    webhook = await hooks.register(ada, receiver.url)
    for n in range(1, 4):
        await hooks.producer.emit(ada)
        await eventually(lambda n=n: len(receiver.requests) == n, what=f"delivery {n}")
    pools = hooks.service.app.state.deliverer.sender.transport._pools
    idle = [c for origin, pool in pools.items() if origin.port == receiver.port for c in pool.idle]
    assert len(idle) == 1  # one connection served the three deliveries
    idle[0].writer.transport.abort()  # as if the receiver had closed it
    await hooks.producer.emit(ada)
    await eventually(lambda: _all_succeeded(hooks, ada, webhook["id"], 4), what="the fourth delivery")
    assert len(receiver.requests) == 4
