"""A background service's PostgreSQL backends run at its own lower CPU priority when the server is on
this host (shared.db.renice_backend): both the SQLAlchemy engine's and the plain asyncpg pool's."""

from __future__ import annotations

import os

import psutil
from sqlalchemy import text

from shared.db import Database, server_is_local
from shared.events.transports.pglog import PgLogTransport


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


async def test_the_engine_s_and_the_fast_pool_s_backends_are_reniced(database_url: str) -> None:
    db = Database(database_url, pool_size=1, application_name="priority-test", backend_nice=7)
    try:
        async with db.transaction() as session:
            engine_backend = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        async with db.fast_transaction() as tx:
            fast_backend = int(await tx.conn.fetchval("SELECT pg_backend_pid()"))
        assert niceness(engine_backend) >= 7
        assert niceness(fast_backend) >= 7
    finally:
        await db.dispose()


async def test_a_card_path_service_s_backends_keep_their_priority(database_url: str) -> None:
    db = Database(database_url, pool_size=1, application_name="priority-test")
    try:
        async with db.fast_transaction() as tx:
            backend = int(await tx.conn.fetchval("SELECT pg_backend_pid()"))
        assert niceness(backend) == niceness(psutil.Process(backend).ppid())  # the postmaster's
    finally:
        await db.dispose()


async def test_the_event_log_s_connections_are_reniced(database_url: str) -> None:
    transport = PgLogTransport(database_url, backend_nice=9)
    await transport.start()
    try:
        async with transport.pool.acquire() as conn:
            assert niceness(int(await conn.fetchval("SELECT pg_backend_pid()"))) >= 9
    finally:
        await transport.close()


def test_only_a_server_on_this_host_is_reniced() -> None:
    assert server_is_local("postgresql://postgres@127.0.0.1:5432/bank")
    assert server_is_local("postgresql+asyncpg://postgres@localhost/bank")
    assert server_is_local("postgresql:///bank?host=/var/run/postgresql")
    assert not server_is_local("postgresql://postgres@db.internal:5432/bank")
    assert not PgLogTransport("postgresql://postgres@db.internal/bank", backend_nice=9).backend_nice
