"""The relay's mark statement stays an index lookup however many rows it has published (decision 0029).

Each published row leaves a dead entry in the outbox's partial index of unpublished rows until a
vacuum. A bitmap scan visits each one's heap page on every call, and an `id IN (subquery)` plan
cached while the outbox was nearly empty walked the whole table. Both made the relay slower with
every event it had sent."""

from __future__ import annotations

import json
from typing import Any

from shared.db import Database
from shared.events import relay as relay_module
from shared.events.outbox import Outbox
from shared.events.relay import Relay
from tests.contract.conftest import Backend, unique
from tests.contract.test_pipeline import MoneyMoved


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [node]
    for child in node.get("Plans", ()):
        nodes += plan_nodes(child)
    return nodes


async def test_the_relay_marks_by_index_after_publishing_row_by_row(db: Database, backend: Backend) -> None:
    topic = unique("accounts.ledger")
    outbox = Outbox("accounts")
    relay = Relay(db, outbox, backend.transport, batch_size=1)
    await relay.drain()
    for seq in range(200):
        async with db.transaction() as s:
            await outbox.emit(s, topic, "acc_1", MoneyMoved(amount=1, seq=seq))
    # One row per mark: 200 dead entries in the unpublished index, none vacuumed yet.
    assert await relay.drain() == 200
    async with db.fast_transaction() as tx:
        await tx.conn.execute(relay_module._INDEX_SCAN_ONLY)
        raw = await tx.conn.fetchval("EXPLAIN (FORMAT JSON) " + relay._mark)
    plan = json.loads(raw) if isinstance(raw, str) else raw
    nodes = plan_nodes(plan[0]["Plan"])
    kinds = {n["Node Type"] for n in nodes}
    assert not kinds & {"Seq Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}, kinds
    assert not kinds & {"Nested Loop", "Hash Join", "Merge Join"}, kinds  # no walk over the table
    scans = {n["Index Name"]: n for n in nodes if n["Node Type"] == "Index Scan"}
    assert set(scans) == {"ix_outbox_unpublished", "outbox_pkey"}, kinds
    assert "ANY" in scans["outbox_pkey"]["Index Cond"]  # the batch's ids, looked up by primary key
