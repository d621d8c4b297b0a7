"""The send worker: takes queued deliveries one at a time and pushes them through the device's provider.

Each worker task claims one due `pending` row with `SELECT … FOR UPDATE SKIP LOCKED` and keeps the row
locked, in its transaction, while the provider call runs; the outcome is written and committed with
it. So a row is in flight in at most one worker of all replicas, and a crash or restart mid-send rolls
the claim back: the row is sent again after the restart, with the same apns-id / collapse id, so the
phone shows it once even if the first attempt did reach the provider (decision 0012).

Outcomes: sent; retry later (429, 5xx, network: exponential backoff from `retry_base_seconds`, or the
provider's Retry-After, capped; `failed` after `max_attempts`); invalid token (the device is deactivated
at once and everything still queued for it dropped; never retried); failed (a request the provider will
never accept: logged, not retried).

Workers are woken in-process when a transaction that queued deliveries commits; other replicas poll.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from services.notifications import repository
from services.notifications.config import NotificationsSettings
from services.notifications.models import Delivery, Device
from services.notifications.observability import PUSH_LATENCY, PUSHES
from services.notifications.providers import Provider, Push, SendResult
from shared.db import Database

log = logging.getLogger("services.notifications.sender")


class Sender:
    def __init__(self, db: Database, providers: dict[str, Provider], settings: NotificationsSettings) -> None:
        self.db = db
        self.providers = providers
        self.settings = settings
        self.wake = asyncio.Event()

    def backoff(self, attempts: int, result: SendResult) -> float:
        if result.retry_after is not None:
            return min(result.retry_after, self.settings.retry_after_max_seconds)
        delay = self.settings.retry_base_seconds * 2 ** max(0, attempts - 1)
        return min(delay, self.settings.retry_max_seconds)

    async def send_one(self) -> bool:
        """Send one due delivery; False when none is due."""
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(Delivery, Device.platform, Device.token, Device.active)
                    .join(Device, Device.id == Delivery.device_id)
                    .where(Delivery.status == "pending", Delivery.next_attempt_at <= func.now())
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(1)
                    .with_for_update(of=Delivery, skip_locked=True)
                )
            ).first()
            if row is None:
                return False
            delivery, platform, token, active = row
            if not active:
                delivery.status, delivery.last_error = "dropped", "device deactivated"
                return True
            provider = self.providers.get(platform)
            if provider is None:
                delivery.status, delivery.last_error = "failed", f"no provider for {platform}"
                return True
            push = Push(delivery.push_id, token, delivery.title, delivery.body, dict(delivery.data))
            result = await provider.send(push)
            attempts = delivery.attempts + 1
            values: dict[str, object] = {
                "attempts": attempts,
                "last_status": result.status,
                "last_error": result.reason or None,
            }
            if result.outcome == "sent":
                values.update(status="sent", sent_at=func.now(), provider_id=result.provider_id)
                if delivery.event_time is not None:
                    PUSH_LATENCY.labels(platform).observe(
                        (datetime.now(UTC) - delivery.event_time).total_seconds()
                    )
            elif result.outcome == "invalid_token":
                values.update(status="invalid_token")
                log.info("device %s token rejected (%s): deactivated", delivery.device_id, result.reason)
            elif result.outcome == "retry" and attempts < self.settings.max_attempts:
                delay = self.backoff(attempts, result)
                values.update(next_attempt_at=func.now() + timedelta(seconds=delay))
            else:
                values.update(status="failed")
                log.warning(
                    "push %s to device %s failed for good after %d attempt(s): %s %s",
                    delivery.push_id, delivery.device_id, attempts, result.status, result.reason,
                )  # fmt: skip
            await session.execute(update(Delivery).where(Delivery.id == delivery.id).values(**values))
            if result.outcome == "invalid_token":
                await repository.deactivate_device(session, delivery.device_id, result.reason)
            outcome = (
                result.outcome
                if result.outcome != "retry" or attempts < self.settings.max_attempts
                else "failed"
            )
            PUSHES.labels(platform, outcome).inc()
        return True

    async def worker(self) -> None:
        while True:
            try:
                self.wake.clear()
                while await self.send_one():
                    pass
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_seconds)
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("push worker failed; retrying")
                await asyncio.sleep(self.settings.poll_seconds)

    async def run(self) -> None:
        """Background job: `send_concurrency` workers."""
        await asyncio.gather(*(self.worker() for _ in range(self.settings.send_concurrency)))
