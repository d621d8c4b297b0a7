"""Database access: one async engine per process, one schema per service, one commit at the edge.

Services write `async with db.transaction() as session:` exactly once per
request or event; everything below that receives the session and never
commits. `expire_on_commit=False` so objects stay readable after the commit.

The card network's hot path instead opens `db.fast_transaction()`: a `Tx` on a
plain asyncpg connection, for statements written as SQL with `$n` parameters
(decision 0020). `fetch_row`, `fetch_all`, `fetch_value` and `execute` run such a statement
in either kind of transaction, so a query is written once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared import tracing
from shared.config import to_asyncpg, to_libpq
from shared.health import Checker
from shared.priority import server_is_local, yield_cpu

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata(schema: str) -> MetaData:
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


_AFTER_COMMIT = "after_commit"

log = logging.getLogger("shared.db")


class Tx:
    """A transaction on a plain asyncpg connection (`Database.fast_transaction`)."""

    __slots__ = ("conn", "info")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.info: dict[str, Any] = {}


Executor = AsyncSession | Tx
E = TypeVar("E", AsyncSession, Tx)


def after_commit(session: Executor, callback: Callable[[], None]) -> None:
    """Run `callback` once after the edge transaction commits (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, {})[callback] = callback


async def fetch_row(on: Executor, sql: str, *args: Any) -> Sequence[Any] | None:
    """The first row of `sql` (`$n` parameters), by position; JSON columns come back parsed."""
    if isinstance(on, Tx):
        row: Sequence[Any] | None = await on.conn.fetchrow(sql, *args)
        return row
    conn = await on.connection()
    return (await conn.exec_driver_sql(sql, args)).first()


async def fetch_all(on: Executor, sql: str, *args: Any) -> Sequence[Sequence[Any]]:
    """Every row of `sql` (`$n` parameters), by position."""
    if isinstance(on, Tx):
        rows: Sequence[Sequence[Any]] = await on.conn.fetch(sql, *args)
        return rows
    conn = await on.connection()
    return (await conn.exec_driver_sql(sql, args)).all()


async def fetch_value(on: Executor, sql: str, *args: Any) -> Any:
    row = await fetch_row(on, sql, *args)
    return None if row is None else row[0]


async def execute(on: Executor, sql: str, *args: Any) -> None:
    if isinstance(on, Tx):
        await on.conn.execute(sql, *args)
    else:
        await (await on.connection()).exec_driver_sql(sql, args)


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """JSON as SQLAlchemy's asyncpg dialect has it: a JSON text in, a parsed value out."""
    await conn.set_type_codec(
        "json", schema="pg_catalog", format="binary",
        encoder=str.encode, decoder=lambda b: json.loads(b.decode()),
    )  # fmt: skip
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary",
        encoder=lambda s: b"\x01" + s.encode(), decoder=lambda b: json.loads(b[1:].decode()),
    )  # fmt: skip


async def _roll_back_if_open(conn: asyncpg.Connection) -> None:
    """The pool's reset: our transactions always end, so the default reset (a round trip of
    RESET ALL, UNLISTEN, unlock…) on every release would buy nothing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        application_name: str = "bank",
        pre_ping: bool = False,
        background: bool = False,
    ) -> None:
        # No pre-ping: it is a round trip on every checkout, a third of the card authorisation path's
        # database time. A connection that died with the server fails its first use instead; SQLAlchemy
        # then invalidates the whole pool, and the request answers 503 (shared/web.py) to be retried.
        self.engine: AsyncEngine = create_async_engine(
            to_asyncpg(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=pre_ping,
            connect_args={"server_settings": {"application_name": application_name}},
        )
        # A background service's backends yield the CPU as the service does (decision 0033).
        self._background = background and server_is_local(url)
        if self._background:
            event.listen(self.engine.sync_engine, "connect", self._background_dbapi_backend)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._span_attributes = {"db.system": "postgresql", "db.client": application_name}
        self._url = url
        self._application_name = application_name
        self._fast_pool_size = pool_size
        self._fast_pool: asyncpg.Pool | None = None
        self._fast_pool_lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """The edge: commit once if the block succeeds, roll back if it raises."""
        async with self._edge(self._session_transaction) as session:
            yield session

    @asynccontextmanager
    async def fast_transaction(self) -> AsyncIterator[Tx]:
        """The edge, for the hot path: a transaction on a plain asyncpg connection from a pool of
        its own (opened on first use), committed once if the block succeeds."""
        async with self._edge(self._plain_transaction) as tx:
            yield tx

    @asynccontextmanager
    async def _edge(self, open_transaction: Callable[[], AbstractAsyncContextManager[E]]) -> AsyncIterator[E]:
        """A traced transaction whose after-commit callbacks run once it has committed."""
        span = tracing.child("db.transaction", kind=tracing.CLIENT, attributes=self._span_attributes)
        try:
            async with open_transaction() as handle:
                yield handle
            if span is not None:
                span.end()
                span = None
            for callback in handle.info.pop(_AFTER_COMMIT, {}).values():
                callback()
        except BaseException as exc:
            if span is not None:
                span.end(exc)
            raise

    @asynccontextmanager
    async def _session_transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def _plain_transaction(self) -> AsyncIterator[Tx]:
        pool = self._fast_pool or await self._open_fast_pool()
        async with pool.acquire() as conn, conn.transaction():
            yield Tx(conn)

    def _background_dbapi_backend(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        yield_cpu(int(cursor.fetchone()[0]))
        cursor.close()

    async def _init_fast_connection(self, conn: asyncpg.Connection) -> None:
        await _json_codecs(conn)
        if self._background:
            yield_cpu(conn.get_server_pid())

    async def _open_fast_pool(self) -> asyncpg.Pool:
        async with self._fast_pool_lock:
            if self._fast_pool is None:
                self._fast_pool = await asyncpg.create_pool(
                    to_libpq(self._url),
                    min_size=0,
                    max_size=self._fast_pool_size,
                    init=self._init_fast_connection,
                    reset=_roll_back_if_open,
                    server_settings={"application_name": self._application_name},
                )
        return self._fast_pool

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def dispose(self) -> None:
        if self._fast_pool is not None:
            await self._fast_pool.close()
            self._fast_pool = None
        await self.engine.dispose()

    async def _server_version(self) -> str:
        async with self.engine.connect() as conn:
            return str((await conn.execute(text("show server_version"))).scalar_one())

    def checker(self) -> Checker:
        async def check() -> tuple[str | None, dict[str, str]]:
            try:
                version = await self._server_version()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                version = await self._server_version()  # a pooled connection outlived a restart
            return None, {"server_version": str(version)}

        return check
