"""`bank ledger verify` as an operator runs it."""

import asyncio
import os
import subprocess
import sys

from sqlalchemy import text

from services.accounts.service import LedgerService
from shared.db import Database
from tests.accounts.conftest import create_customer


async def run_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BANK_DATABASE_URL=database_url)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bank.cli", "ledger", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_verify_passes_then_catches_a_tampered_balance(
    db: Database, ledger: LedgerService, database_url: str
) -> None:
    ada = await create_customer(db, ledger, balance=4_355)
    ok = await run_verify(database_url)
    assert ok.returncode == 0, ok.stderr
    assert "ledger verified" in ok.stdout

    async with db.transaction() as s:
        await s.execute(text("UPDATE accounts.accounts SET held = 7 WHERE id = :a"), {"a": ada.account_id})
    bad = await run_verify(database_url)
    assert bad.returncode == 1
    assert f"{ada.account_id}: held 7 but active holds sum to 0" in bad.stderr
