"""Database access: one async engine per process, one schema per service, one commit at the edge.

Services write `async with db.transaction() as session:` exactly once per
request or event; everything below that receives the session and never
commits. `expire_on_commit=False` so objects stay readable after the commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from shared import tracing
from shared.config import to_asyncpg
from shared.health import Checker

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


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run `callback` once after the edge transaction commits (never if it rolls back)."""
    session.info.setdefault(_AFTER_COMMIT, {})[callback] = callback


class Database:
    def __init__(
        self, url: str, *, pool_size: int = 10, application_name: str = "bank", pre_ping: bool = False
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
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._span_attributes = {"db.system": "postgresql", "db.client": application_name}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """The edge: commit once if the block succeeds, roll back if it raises."""
        span = tracing.child("db.transaction", kind=tracing.CLIENT, attributes=self._span_attributes)
        try:
            async with self.sessions() as session:
                async with session.begin():
                    yield session
                if span is not None:
                    span.end()
                    span = None
                for callback in session.info.pop(_AFTER_COMMIT, {}).values():
                    callback()
        except BaseException as exc:
            if span is not None:
                span.end(exc)
                span = None
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def dispose(self) -> None:
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
