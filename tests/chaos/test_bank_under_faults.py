"""The bank test (in the spirit of Jepsen's bank workload): the simulator's `day` traffic through the
gateway (authorisations, repeats, reversals, advices, clearings, force-posts, and the customers'
payments to each other and pot deposits and withdrawals from their app) while services are killed
with SIGKILL and restarted every few seconds, PostgreSQL is restarted, accounts is slowed by a
delaying proxy (and, on Kafka, the broker is stopped and started); then the bank is left to settle and
`bank.checker` must find no violation of any invariant: money conserved across every payment and pot
move (`transfers_conserve`), each in the feed, and every move done exactly once for the one the
customer's app was answered (resends of an unanswered call carry the same dedupe_id).

The short runs here are part of `make test`; `make soak` runs the same for 30 minutes
(`python -m bank.faults --seconds 1800`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bank.faults import dump, run_bank_test, run_crash_test


def _report(name: str, doc: dict[str, Any]) -> None:
    out = Path(os.environ.get("BANK_TEST_REPORTS", tempfile.gettempdir())) / f"bank-test-{name}.json"
    out.write_text(dump(doc))
    checker = doc["checker"]
    print(
        f"\nbank test ({name}): {doc['operations']['messages_sent']} messages, "
        f"{doc['faults']['injected']} faults {doc['faults']['by_kind']}, "
        f"{checker['violations_total']} violations; checked {', '.join(checker['checked'])} ({out})"
    )


def _assert_sound(doc: dict[str, Any], *, kinds: set[str]) -> None:
    faults, checker = doc["faults"], doc["checker"]
    assert set(faults["by_kind"]) >= kinds, faults
    assert faults["by_kind"]["kill"] >= 2, faults  # the runner injects at least two kills in any run
    assert not faults["failed_to_inject"], faults["failed_to_inject"]
    assert doc["operations"]["messages_sent"] >= 200, doc["operations"]
    assert checker["ok"], json.dumps(checker, indent=1, default=str)
    for always in (
        "entries_balance",
        "ledger_sums_to_zero",
        "balance_is_postings",
        "no_negative_balance",
        "holds_accounted",
        "no_stray_holds",
        "api_balance",
        "transfers_conserve",
        "transfers_in_feed",
    ):
        assert always in checker["checked"], checker["checked"]
    answers, moves = doc["operations"]["answers"], doc["operations"]["app_moves"]
    for kind in ("payment", "pot_deposit", "pot_withdrawal"):
        assert answers.get(kind, {}).get("ok", 0) > 0, (kind, answers.get(kind))
    # Every payment and pot move the bank made is one the app was answered as done, and only once.
    done = moves["payments"] + moves["pot_deposits"] + moves["pot_withdrawals"]
    assert checker["figures"]["transfers"] == done, (checker["figures"]["transfers"], moves)
    # And from outside, through the public API: every balance and pot as the network's and the app's
    # books say, the ledger verified.
    assert doc["simulator_money_differences"] == [], doc["simulator_reconciliation_differences"]


async def test_money_survives_kills_a_database_restart_and_a_slow_ledger(tmp_path: Path) -> None:
    doc = await run_bank_test(tmp_path / "bank", seconds=60, rate=8, customers=12, kill_every=6)
    _report("pglog", doc)
    _assert_sound(doc, kinds={"kill", "postgres-restart", "delay"})


@pytest.mark.kafka
async def test_money_survives_the_same_faults_and_a_kafka_broker_stop(tmp_path: Path) -> None:
    doc = await run_bank_test(tmp_path / "bank", seconds=45, rate=8, customers=10, kill_every=6, kafka=True)
    _report("kafka", doc)
    _assert_sound(doc, kinds={"kill", "postgres-restart", "delay", "kafka-stop"})


async def test_no_crash_strands_money_when_the_network_never_repeats(tmp_path: Path) -> None:
    """cards and accounts killed in turn mid-batch; nothing repeated or reversed by the network. Every
    hold no approved authorisation stands behind is released within 60 s (decision 0031), and every
    approval the network was told of keeps its hold."""
    doc = await run_crash_test(tmp_path / "bank", seconds=30, rate=60, customers=20, kill_every=4)
    out = Path(os.environ.get("BANK_TEST_REPORTS", tempfile.gettempdir())) / "bank-test-crash.json"
    out.write_text(dump(doc))
    kills = Counter(f["target"] for f in doc["faults"]["log"] if f["kind"] == "kill")
    assert kills.get("cards", 0) >= 2 and kills.get("accounts", 0) >= 2, doc["faults"]
    assert doc["approved_answered"] >= 100, doc["answers"]
    assert doc["stray_holds_left"] == [] and doc["no_stray_hold_after_s"] <= 60, doc
    assert doc["unconfirmed_left"] == 0 or doc["no_stray_hold_after_s"] <= 60
    assert doc["approved_without_active_hold"] == [], doc["approved_without_active_hold"]
    assert doc["approved_answered_unrecorded"] == 0
    assert doc["checker"]["ok"], json.dumps(doc["checker"], indent=1, default=str)
