"""The app factory over a real socket: error mapping, trace propagation, metrics, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, FastAPI, Form
from sqlalchemy import text

from bank.infra.ports import free_port
from bank.infra.postgres import EmbeddedPostgres
from shared.db import Database, fetch_value
from shared.errors import BankError
from shared.money import parse_amount
from shared.web import create_app
from tests.support.serving import Served

router = APIRouter()


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("an unexpected bug")


@router.get("/missing")
async def missing() -> None:
    raise BankError("not_found.account", "no such account")


@router.post("/topup")
async def topup(amount: str = Form(...), account_id: str = Form(...)) -> dict[str, int]:
    return {"amount": parse_amount(amount)}


@pytest_asyncio.fixture(loop_scope="session")
async def base_url() -> AsyncIterator[str]:
    async with Served(create_app("test", routers=[router])) as served:
        yield served.url


async def test_typed_errors_map_to_status_and_body(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get("/missing")
        assert r.status_code == 404
        assert r.json() == {"code": "not_found.account", "message": "no such account"}

        r = await client.post("/topup", data={"amount": "19.15", "account_id": "acc_1"})
        assert r.status_code == 400
        assert r.json()["code"] == "bad_request.bad_param.amount"

        r = await client.post("/topup", data={"amount": "100"})
        assert r.status_code == 400
        assert r.json()["code"] == "bad_request.missing_param"
        assert "account_id" in r.json()["message"]

        r = await client.get("/no/such/route")
        assert r.status_code == 404
        assert r.json()["code"] == "not_found.route"

        r = await client.delete("/missing")
        assert r.status_code == 405
        assert r.json()["code"] == "method_not_allowed.route"


async def test_unexpected_error_is_a_500_with_no_internals(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"code": "internal.error", "message": "something went wrong on our side"}


async def test_trace_context_is_continued(base_url: str) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get("/missing", headers={"traceparent": parent})
        fresh = await client.get("/missing")
    assert r.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert r.headers["traceparent"] != parent
    assert fresh.headers["traceparent"].split("-")[1] != "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_metrics_count_requests_by_route_template(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        await client.get("/missing")
        text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/missing",service="test",status="404"}' in text
    assert "http_request_duration_seconds_bucket" in text


@asynccontextmanager
async def served_on_a_database(
    tmp_path: Path, app_for: Callable[[Database], FastAPI], pool_size: int
) -> AsyncIterator[tuple[httpx.AsyncClient, EmbeddedPostgres]]:
    """A real PostgreSQL, the app `app_for` builds on it over a real socket, and a client of it."""
    pg = EmbeddedPostgres(tmp_path / "pg", free_port(), durable=False)
    pg.start()
    db = Database(pg.url, pool_size=pool_size)
    served = await Served(app_for(db)).start()
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            yield client, pg
    finally:
        await served.stop()
        await db.dispose()
        pg.stop("immediate")


async def until_answered(client: httpx.AsyncClient, path: str) -> list[httpx.Response]:
    """GET `path` until a 200 (at most five times): every answer, the last one last."""
    answers = []
    for _ in range(5):
        answers.append(await client.get(path))
        if answers[-1].status_code == 200:
            break
    return answers


def assert_retryable_503(failed: httpx.Response) -> None:
    assert failed.status_code == 503, failed.text
    assert failed.json()["code"] == "service_unavailable.database"
    assert failed.headers["retry-after"] == "1"


async def test_readyz_reports_the_database_going_away(tmp_path: Path) -> None:
    def app_for(db: Database) -> FastAPI:
        return create_app("test", checkers={"database": db.checker()})

    async with served_on_a_database(tmp_path, app_for, pool_size=1) as (client, pg):
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"]["ok"] is True

        await asyncio.to_thread(pg.stop, "immediate")
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["database"]["ok"] is False
        assert down.json()["checks"]["database"]["error"]
        assert (await client.get("/healthz")).status_code == 200

        await asyncio.to_thread(pg.start)
        assert (await client.get("/readyz")).status_code == 200


async def test_a_connection_lost_to_a_database_restart_is_a_503_then_recovers(tmp_path: Path) -> None:
    def app_for(db: Database) -> FastAPI:
        queries = APIRouter()

        @queries.get("/now")
        async def now() -> dict[str, str]:
            async with db.read() as session:
                return {"now": str((await session.execute(text("SELECT now()"))).scalar_one())}

        return create_app("test", routers=[queries])

    async with served_on_a_database(tmp_path, app_for, pool_size=2) as (client, pg):
        assert (await client.get("/now")).status_code == 200
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.to_thread(pg.start)
        # The pooled connection died with the old server: its first use fails, typed and
        # retryable, never a 500; the pool is invalidated and the next request reconnects.
        answers = await until_answered(client, "/now")
        assert answers[-1].status_code == 200, [a.text for a in answers]
        for failed in answers[:-1]:
            assert_retryable_503(failed)


async def test_the_fast_path_answers_503_while_the_database_is_down_then_recovers(tmp_path: Path) -> None:
    """The card path's plain asyncpg connections (Database.fast_transaction): a connection lost to a
    restart, or no database at all, is a typed, retryable 503 too, never a 500."""

    def app_for(db: Database) -> FastAPI:
        queries = APIRouter()

        @queries.get("/fast")
        async def fast() -> dict[str, int]:
            async with db.fast_transaction() as tx:
                return {"one": await fetch_value(tx, "SELECT $1::int", 1)}

        return create_app("test", routers=[queries])

    async with served_on_a_database(tmp_path, app_for, pool_size=2) as (client, pg):
        assert (await client.get("/fast")).json() == {"one": 1}
        await asyncio.to_thread(pg.stop, "immediate")
        down = [await client.get("/fast") for _ in range(3)]  # the pooled connection, then none
        await asyncio.to_thread(pg.start)
        answers = await until_answered(client, "/fast")
        assert answers[-1].json() == {"one": 1}, [a.text for a in answers]
        for failed in down + answers[:-1]:
            assert_retryable_503(failed)


@pytest.mark.parametrize("header", ["garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", ""])
async def test_bad_traceparent_starts_a_new_trace(base_url: str, header: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get("/missing", headers={"traceparent": header})
    assert r.headers["traceparent"].startswith("00-")
    assert "0" * 32 not in r.headers["traceparent"]


async def test_a_request_whose_deadline_has_passed_is_not_started(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get("/missing", headers={"x-deadline-ms": "0"})
        ok = await client.get("/missing", headers={"x-deadline-ms": "5000"})
    assert r.status_code == 504 and r.json()["code"] == "timeout.deadline_exceeded"
    assert ok.status_code == 404
