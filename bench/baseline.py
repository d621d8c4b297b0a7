"""The baseline: the same hold transaction as an authorisation, without the architecture.

One process, FastAPI + asyncpg, one endpoint taking the simulator's 0100 message: find the account by
PAN, lock its row (`SELECT … FOR UPDATE`), check available = balance - held, insert the hold, update
held, one commit, answer 00 or 51. No gateway, no second service, no outbox, no ORM. It runs on the
same PostgreSQL as the bank (its own schema `baseline`) and is driven by the same open-loop generator,
so `bank rate / baseline rate` is the cost of the architecture.

    .venv/bin/python -m bench.baseline --database-url URL [--rate 300 --duration 30 --cards 1000]

(`bench.standard` runs it beside the bank.) Figures go to stdout and bench/results/baseline.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

RESULTS = Path(__file__).resolve().parent / "results"
BALANCE = 10**9

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS baseline;
DROP TABLE IF EXISTS baseline.holds;
DROP TABLE IF EXISTS baseline.accounts;
CREATE TABLE baseline.accounts (id bigint PRIMARY KEY, pan text UNIQUE NOT NULL, balance bigint NOT NULL,
                                held bigint NOT NULL DEFAULT 0);
CREATE TABLE baseline.holds (network_transaction_id text PRIMARY KEY, account_id bigint NOT NULL,
                             amount bigint NOT NULL, created timestamptz NOT NULL DEFAULT now());
"""


def create_app(database_url: str) -> Any:
    # FastAPI resolves the handler's annotations in this module's globals (they are strings here), so
    # Request must be imported at module level, or `request` would be taken for a query parameter.
    from shared.config import to_libpq

    app = FastAPI()
    state: dict[str, asyncpg.Pool] = {}

    @app.on_event("startup")
    async def startup() -> None:
        state["pool"] = await asyncpg.create_pool(to_libpq(database_url), min_size=10, max_size=10)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/network/authorisations")
    async def authorise(request: Request) -> JSONResponse:
        msg = json.loads(await request.body())
        nid, amount = msg["network_transaction_id"], int(msg["amount"])
        code = "00"
        async with state["pool"].acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, balance - held AS available FROM baseline.accounts WHERE pan = $1 FOR UPDATE",
                msg["pan"],
            )
            if row is None:
                code = "14"
            elif row["available"] < amount:
                code = "51"
            elif amount > 0:
                await conn.execute(
                    "INSERT INTO baseline.holds (network_transaction_id, account_id, amount) "
                    "VALUES ($1, $2, $3)",
                    nid, row["id"], amount,
                )  # fmt: skip
                await conn.execute(
                    "UPDATE baseline.accounts SET held = held + $2 WHERE id = $1", row["id"], amount
                )
        return JSONResponse({"mti": "0110", "response_code": code, "network_transaction_id": nid})

    return app


def serve(database_url: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(database_url), host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def seed(database_url: str, pans: list[str]) -> None:
    from shared.config import to_libpq

    conn = await asyncpg.connect(to_libpq(database_url))
    try:
        await conn.execute(SCHEMA)
        await conn.copy_records_to_table(
            "accounts", schema_name="baseline", records=[(i, pan, BALANCE, 0) for i, pan in enumerate(pans)],
            columns=("id", "pan", "balance", "held"),
        )  # fmt: skip
        await conn.execute("ANALYZE baseline.accounts")
    finally:
        await conn.close()


class BaselineServer:
    """The baseline endpoint as its own process on a free port."""

    def __init__(self, database_url: str) -> None:
        from bank.infra.ports import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.baseline", "_serve", database_url, str(self.port)]
        self.proc = subprocess.Popen(cmd)

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the baseline server exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("the baseline server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def fake_customers(count: int) -> list[Any]:
    from simulator.population import Customer

    return [Customer(i, f"b{i}@baseline", "-", "Baseline", BALANCE, pan=f"999{i:013d}", cvc="123",
                     expiry="3012") for i in range(count)]  # fmt: skip


async def measure(database_url: str, rate: float, duration: float, cards: int) -> dict[str, Any]:
    from bench.standard import steady_run

    customers = fake_customers(cards)
    await seed(database_url, [c.pan for c in customers])
    server = BaselineServer(database_url)
    try:
        await server.ready()
        return await steady_run(server.url, customers, rate, duration, key="-")
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--database-url", default=os.environ.get("BANK_DATABASE_URL", ""), required=False)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--cards", type=int, default=1000)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url (or BANK_DATABASE_URL) is required")
    result = asyncio.run(measure(args.database_url, args.rate, args.duration, args.cards))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baseline.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
