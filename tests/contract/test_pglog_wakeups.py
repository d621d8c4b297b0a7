"""pglog wakes a waiting consumer by NOTIFY on its own topics' channels, and only on those."""

from __future__ import annotations

import asyncio

from shared.config import BankSettings
from shared.events.transports.pglog import PgLogTransport, channel_of
from tests.contract.conftest import record, unique


def test_channel_names_fit_postgresql_and_stay_distinct() -> None:
    short, long_a, long_b = "cards.authorisations", "t" * 80 + "a", "t" * 80 + "b"
    assert channel_of(short) == "events_log:cards.authorisations"
    assert len(channel_of(long_a).encode()) <= 63
    assert channel_of(long_a) != channel_of(long_b)


async def test_a_publish_wakes_only_the_consumers_of_its_topic(settings: BankSettings) -> None:
    transport = PgLogTransport(settings.database_url, member_ttl=3.0)
    await transport.start()
    mine, other = unique("wake") + "x" * 60, unique("other")  # one name long enough to be hashed
    readers = await transport.subscribe(unique("group"), [mine])
    bystanders = await transport.subscribe(unique("group"), [other])
    try:
        # A poll that would wait a minute returns as soon as its topic is published to.
        waiting = asyncio.create_task(readers.poll(10, timeout=60))
        bystander = asyncio.create_task(bystanders.poll(10, timeout=60))
        await asyncio.sleep(0.2)  # both are now waiting on their notifications
        await transport.publish([record(mine, "acc_1", 1)])
        got = await asyncio.wait_for(waiting, 30)
        assert [r.topic for r in got] == [mine]
        await asyncio.sleep(0.5)
        assert not bystander.done()  # another topic's publish did not wake it
        bystander.cancel()
    finally:
        await readers.close()
        await bystanders.close()
        await transport.close()
