"""The service killed (SIGKILL) in the middle of a delivery: the delivery is sent again by the next
process once its lease runs out, and the receiver sees one logical delivery (one webhook-id)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from bank.infra.ports import free_port
from shared.db import Database
from tests.support.waiting import eventually
from tests.webhooks.conftest import Hooks, Received, Receiver, Reply, running_webhooks


@asynccontextmanager
async def webhooks_process(hooks: Hooks, port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`python -m services.webhooks` as its own OS process, as `bank up` runs it."""
    env = {
        **os.environ,
        "BANK_DATABASE_URL": hooks.bank_settings.database_url,
        "BANK_TRANSPORT": "pglog",
        "BANK_ACCOUNTS_URL": hooks.accounts.url,
        "BANK_WEBHOOKS_URL": f"http://127.0.0.1:{port}",
        "BANK_INTERNAL_TOKEN": hooks.bank_settings.internal_token,
        "BANK_LOG_JSON": "false",
        "WEBHOOKS_ALLOW_HTTP": "true",
        "WEBHOOKS_ALLOW_NETWORKS": json.dumps(["127.0.0.1/32"]),
        "WEBHOOKS_TIMEOUT_SECONDS": "30",
        "WEBHOOKS_LEASE_GRACE_SECONDS": "0",
        "WEBHOOKS_POLL_SECONDS": "0.1",
        "WEBHOOKS_RETRY_SCHEDULE_SECONDS": "[0.05, 0.05]",
    }
    proc = subprocess.Popen([sys.executable, "-m", "services.webhooks"], env=env)  # noqa: ASYNC220
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def up() -> bool:
                assert proc.poll() is None, "the webhooks process exited"
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(up, timeout=120, what="the webhooks process to start")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)


async def test_killed_mid_delivery_is_delivered_after_restart(
    db: Database, settings: Any, receivers: Callable[..., Awaitable[Receiver]]
) -> None:
    first_arrived, release = asyncio.Event(), asyncio.Event()

    async def hang_first(n: int, request: Received) -> Reply:
        if n == 1:
            first_arrived.set()
            await release.wait()  # the sender dies while we "process" it
        return 200, {}, b"ok"

    receiver = await receivers(hang_first)
    # The in-process service only lends its accounts and producer: its own worker must not deliver.
    async with running_webhooks(db, settings, workers=1, poll_seconds=3600, claim_batch=1) as hooks:
        hooks.service.app.state.deliverer.settings = hooks.service.app.state.deliverer.settings.model_copy(
            update={"workers": 0}
        )
        ada = await hooks.customer()
        port = free_port()
        try:
            async with webhooks_process(hooks, port) as first:
                r = await hooks.http.post(
                    "/webhooks",
                    data={"account_id": ada.account_id, "url": receiver.url},
                    headers=hooks.auth(ada),
                )
                webhook = r.json()["webhook"]
                await hooks.producer.emit(ada)
                await asyncio.wait_for(first_arrived.wait(), 120)
                first.kill()  # SIGKILL: no shutdown, no release, the lease is all that is left
                await asyncio.to_thread(first.wait, 60)
            release.set()
            [row] = await hooks.rows("SELECT status, lease_until FROM webhooks.deliveries")
            assert row["status"] == "pending" and row["lease_until"] is not None

            async with webhooks_process(hooks, port):
                await eventually(
                    lambda: _delivered(hooks, webhook["id"]), timeout=120, what="delivery after the restart"
                )
        finally:
            release.set()
        assert len(receiver.requests) == 2
        assert receiver.requests[0].webhook_id == receiver.requests[1].webhook_id
        [delivery] = await hooks.deliveries(ada, webhook["id"])
        assert delivery["status"] == "succeeded"
        assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, None), (2, 200)]
        assert delivery["attempts"][0]["error"].startswith("interrupted")


async def _delivered(hooks: Hooks, webhook_id: str) -> bool:
    return await hooks.delivery_status(webhook_id) == ["succeeded"]
