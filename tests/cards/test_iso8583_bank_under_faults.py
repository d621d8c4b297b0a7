"""The bank test (tests/chaos/test_bank_under_faults.py) with the simulator on the ISO 8583 link: the
`day` traffic over pipelined links to cards (clearing stays JSON) while services are killed with
SIGKILL and restarted, PostgreSQL is restarted and accounts is slowed; a kill of cards cuts every link
with messages in flight, and the network repeats (0101) what went unanswered. Then `bank.checker`
must find no violation of any invariant, and the simulator's books must agree with the bank."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bank.faults import dump, run_bank_test


async def test_money_survives_kills_a_database_restart_and_a_slow_ledger_on_the_link(tmp_path: Path) -> None:
    folder = tmp_path / "bank"
    doc = await run_bank_test(folder, seconds=60, rate=8, customers=12, kill_every=6, wire="iso8583")
    out = Path(os.environ.get("BANK_TEST_REPORTS", tempfile.gettempdir())) / "bank-test-iso8583.json"
    out.write_text(dump(doc))
    faults, checker = doc["faults"], doc["checker"]
    assert doc["wire"] == "iso8583" and doc["links"]["links"] >= 2, doc["links"]
    assert set(faults["by_kind"]) >= {"kill", "postgres-restart", "delay"}, faults
    assert faults["by_kind"]["kill"] >= 2 and not faults["failed_to_inject"], faults
    assert doc["operations"]["messages_sent"] >= 200, doc["operations"]
    answers = doc["operations"]["answers"].get("authorisation", {})
    assert answers.get("00", 0) >= 100, answers
    assert checker["ok"], json.dumps(checker, indent=1, default=str)
    for always in ("entries_balance", "ledger_sums_to_zero", "balance_is_postings", "no_negative_balance",
                   "holds_accounted", "no_stray_holds", "api_balance"):  # fmt: skip
        assert always in checker["checked"], checker["checked"]
    assert doc["simulator_reconciliation_differences"] == [], doc["simulator_reconciliation_differences"]
