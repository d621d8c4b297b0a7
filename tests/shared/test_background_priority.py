"""A background service's PostgreSQL backends yield the CPU as the service does, when the server is on
this host (shared.priority.yield_cpu, decisions 0033 and 0047): the SQLAlchemy engine's, the plain
asyncpg pool's and the event log's readers; a card path service's keep their priority."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sqlalchemy import text

from shared.db import Database
from shared.events.transports.pglog import PgLogTransport
from shared.priority import is_background, server_is_local, yield_cpu


async def test_the_engine_s_and_the_fast_pool_s_backends_yield(database_url: str) -> None:
    db = Database(database_url, pool_size=1, application_name="priority-test", background=True)
    try:
        async with db.transaction() as session:
            engine_backend = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        async with db.fast_transaction() as tx:
            fast_backend = int(await tx.conn.fetchval("SELECT pg_backend_pid()"))
        assert is_background(engine_backend)
        assert is_background(fast_backend)
    finally:
        await db.dispose()


async def test_a_card_path_service_s_backends_keep_their_priority(database_url: str) -> None:
    db = Database(database_url, pool_size=1, application_name="priority-test")
    try:
        async with db.fast_transaction() as tx:
            backend = int(await tx.conn.fetchval("SELECT pg_backend_pid()"))
        assert not is_background(backend)
    finally:
        await db.dispose()


async def test_the_event_log_s_readers_yield_and_its_publisher_does_not(database_url: str) -> None:
    transport = PgLogTransport(database_url, application_name="priority-test.events", background=True)
    await transport.start()
    try:
        async with transport.pool.acquire() as conn:
            assert is_background(int(await conn.fetchval("SELECT pg_backend_pid()")))
            assert await conn.fetchval("SHOW application_name") == "priority-test.events"
        publisher = await transport._publisher()
        assert not is_background(int(await publisher.fetchval("SELECT pg_backend_pid()")))
    finally:
        await transport.close()


def test_every_thread_of_a_process_yields_and_so_do_the_threads_it_starts_later() -> None:
    sleeper = "threading.Thread(target=time.sleep, args=(30,)).start()"
    program = f"import threading, time; {sleeper}; input(); {sleeper}; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE)
    try:
        yield_cpu(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"\n")
        child.stdin.flush()
        deadline = time.monotonic() + 10
        while len(tasks := os.listdir(f"/proc/{child.pid}/task")) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(tasks) == 3
        assert all(is_background(int(tid)) for tid in tasks)
    finally:
        child.kill()
        child.wait()


def test_only_a_server_on_this_host_is_asked_to_yield() -> None:
    assert server_is_local("postgresql://postgres@127.0.0.1:5432/bank")
    assert server_is_local("postgresql+asyncpg://postgres@localhost/bank")
    assert server_is_local("postgresql:///bank?host=/var/run/postgresql")
    assert not server_is_local("postgresql://postgres@db.internal:5432/bank")
    assert not PgLogTransport("postgresql://postgres@db.internal/bank", background=True).background
