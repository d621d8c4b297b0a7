"""The send workers: claim a batch of due deliveries, push them concurrently, record the outcomes at once.

Each worker task claims up to `send_batch_size` due `pending` rows with one `SELECT … FOR UPDATE SKIP
LOCKED` and keeps them locked, in its transaction, while the provider calls run: all of the batch's
pushes go out concurrently, multiplexed over the provider's one HTTP/2 connection. The outcomes are then
written with one `UPDATE` and committed. So a row is in flight in at most one worker of all replicas,
and a crash or restart mid-send rolls the claim back: the batch is sent again after the restart, with
the same apns-id / collapse id, so the phone shows each push once even if the first attempt did reach
the provider (decision 0012). A batch costs four database round trips (begin, claim, record, commit)
however many pushes it holds, on a plain asyncpg connection (`Database.fast_transaction`).

Outcomes: sent; retry later (429, 5xx, network, or a push the adapter could not render or classify, a
bug, logged: exponential backoff from `retry_base_seconds`, or the provider's Retry-After, capped;
`failed` after `max_attempts`); invalid token (the device is deactivated at once and everything still
queued for it dropped; never retried); failed (a request the provider will never accept: logged, not
retried).

Each provider gets the batch's pushes for it at once (`send_many`): their streams are opened and
written in one turn of the event loop, one write for all, with no task per push.

Workers are woken in-process when a transaction that queued deliveries commits (`wake`); one idle worker
takes each wake-up, and a worker that claimed a full batch wakes another to help. Other replicas, and
rows due later (backoff), are found by polling.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from services.notifications import repository
from services.notifications.config import NotificationsSettings
from services.notifications.observability import PUSH_LATENCY, PUSHES
from services.notifications.providers import Provider, Push, SendResult
from shared.db import Database
from shared.observability import DEVICES_DEACTIVATED

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

log = logging.getLogger("services.notifications.sender")


class Sender:
    def __init__(self, db: Database, providers: dict[str, Provider], settings: NotificationsSettings) -> None:
        self.db = db
        self.providers = providers
        self.settings = settings
        self._work = asyncio.Event()
        self._pushes: dict[tuple[str, str], Counter] = {}  # the metrics' children, looked up once
        self._latency: dict[str, Histogram] = {}

    def wake(self) -> None:
        """Deliveries were just committed: let an idle worker claim them now (an `after_commit` hook)."""
        self._work.set()

    def backoff(self, attempts: int, result: SendResult) -> float:
        if result.retry_after is not None:
            return min(result.retry_after, self.settings.retry_after_max_seconds)
        delay = self.settings.retry_base_seconds * 2 ** max(0, attempts - 1)
        return min(delay, self.settings.retry_max_seconds)

    async def _send(self, provider: Provider, rows: list[repository.Claimed]) -> list[SendResult]:
        pushes = [Push(r.push_id, r.token, r.title, r.body, dict(r.data)) for r in rows]
        try:  # the adapter isolates a push it cannot render; anything else must not lose the batch
            return await provider.send_many(pushes)
        except Exception as exc:
            log.exception("%d push(es) could not be sent; they will be tried again", len(pushes))
            # Retried with backoff, up to max_attempts: an unexpected error is not proof the push is bad.
            return [SendResult("retry", None, f"{type(exc).__name__}: {exc}")] * len(pushes)

    async def send_batch(self) -> int:
        """Claim and send up to `send_batch_size` due deliveries; how many were claimed (0: none due)."""
        async with self.db.fast_transaction() as tx:
            rows = await repository.claim_due(tx, self.settings.send_batch_size)
            if not rows:
                return 0
            if len(rows) == self.settings.send_batch_size:
                self.wake()  # maybe more are due: let another worker start on them meanwhile
            outcomes: list[repository.Outcome] = []
            sends: dict[str, list[repository.Claimed]] = {}  # platform -> its rows
            for row in rows:
                if not row.active:
                    outcomes.append(repository.Outcome(row.id, "dropped", error="device deactivated"))
                elif row.platform not in self.providers:
                    missing = f"no provider for {row.platform}"
                    outcomes.append(repository.Outcome(row.id, "failed", error=missing))
                else:
                    sends.setdefault(row.platform, []).append(row)
            results = await asyncio.gather(*(self._send(self.providers[p], rs) for p, rs in sends.items()))
            now = datetime.now(UTC)
            dead: dict[str, str] = {}
            for group, group_results in zip(sends.values(), results, strict=True):
                for row, result in zip(group, group_results, strict=True):
                    outcomes.append(self._outcome(row, result, now))
                    if result.outcome == "invalid_token":
                        dead[row.device_id] = result.reason
                        DEVICES_DEACTIVATED.labels(row.platform).inc()
            await repository.record_outcomes(tx, outcomes)
            await repository.deactivate_devices(tx, dead)
        return len(rows)

    def _outcome(self, row: repository.Claimed, result: SendResult, now: datetime) -> repository.Outcome:
        attempts = row.attempts + 1
        status, retry_in = result.outcome, None
        if result.outcome == "sent":
            if row.event_time is not None:
                latency = self._latency.get(row.platform) or self._latency.setdefault(
                    row.platform, PUSH_LATENCY.labels(row.platform)
                )
                latency.observe((now - row.event_time).total_seconds())
        elif result.outcome == "invalid_token":
            log.info("device %s token rejected (%s): deactivated", row.device_id, result.reason)
        elif result.outcome == "retry" and attempts < self.settings.max_attempts:
            retry_in = self.backoff(attempts, result)
        else:
            status = "failed"
            log.warning(
                "push %s to device %s failed for good after %d attempt(s): %s %s",
                row.push_id, row.device_id, attempts, result.status, result.reason,
            )  # fmt: skip
        key = (row.platform, status)
        (self._pushes.get(key) or self._pushes.setdefault(key, PUSHES.labels(*key))).inc()
        return repository.Outcome(
            row.id,
            "pending" if status == "retry" else status,
            attempts=attempts,
            status_code=result.status,
            error=result.reason or None,
            provider_id=result.provider_id,
            retry_in=retry_in,
        )

    async def _wait_for_work(self) -> None:
        """Until woken (one idle worker per wake-up) or the poll interval has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.poll_seconds
        while not self._work.is_set():  # another worker may have taken the wake-up that woke us
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._work.wait(), remaining)
            except TimeoutError:
                return
        self._work.clear()

    async def worker(self) -> None:
        batch = self.settings.send_batch_size
        while True:
            try:
                await self._wait_for_work()
                while await self.send_batch() == batch:
                    pass  # a short batch drained the queue; rows committed later wake a worker
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("push worker failed; retrying")
                await asyncio.sleep(self.settings.poll_seconds)

    async def run(self) -> None:
        """Background job: `send_concurrency` workers, each with at most one batch in flight."""
        await asyncio.gather(*(self.worker() for _ in range(self.settings.send_concurrency)))
