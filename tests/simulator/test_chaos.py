"""One failure scenario in CI: accounts killed (SIGKILL) for a few seconds during a low-rate `day`.

Authorisations are answered (91) rather than left hanging, and once accounts is back the network's
books and the bank agree exactly, and the ledger verifies (no stray holds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bank.chaos import run_chaos
from simulator.loadgen import NO_ANSWER
from simulator.runner import RunConfig


async def test_accounts_killed_during_day(tmp_path: Path, work_dir: Path) -> None:
    cfg = RunConfig(scenario="day", rate=10, duration=14, seed=5, customers=20, live=False,
                    settle_seconds=90, results=tmp_path / "results")  # fmt: skip
    result = await run_chaos("accounts-kill", cfg, fault_at=3, fault_seconds=4, folder=work_dir)

    assert result.differences == [], "\n".join(result.differences)
    chaos = result.report["chaos"]
    assert chaos["scenario"] == "accounts-kill" and chaos["ready_after_restart_s"] >= 0
    codes = result.report["codes"]["authorisation"]
    assert codes.get("91", 0) > 0, f"accounts was down, yet no authorisation was declined 91: {codes}"
    assert NO_ANSWER not in codes, f"some authorisations hung until the network gave up: {codes}"
    assert result.report["run"]["ledger_checked"]


async def test_overload_is_refused_typed_and_never_at_the_cost_of_money(
    tmp_path: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of authorisations far past capacity beside `day`. Only what timing cannot flake: every
    message answered within the network's timeout and never with a 5xx, every refusal a typed 429,
    no reversal ever refused, and the books and the ledger agree afterwards (decision 0036)."""
    cfg = RunConfig(scenario="day", rate=10, duration=14, seed=7, customers=20, live=False,
                    settle_seconds=90, results=tmp_path / "results")  # fmt: skip
    # Cards deciding at most 4 authorisations a batch: far below the flood on any machine, while the
    # flood itself stays within what this test process can send and read on two shared cores.
    monkeypatch.setenv("CARDS_AUTHORISATION_BATCH_MAX", "4")
    result = await run_chaos("overload", cfg, fault_at=3, fault_seconds=5, folder=work_dir, flood_rate=500)

    flood = result.report["chaos"]["flood"]
    assert flood["sent"] >= 2000, flood
    answers = flood["codes"]
    assert NO_ANSWER not in answers, f"flood messages went unanswered: {answers}"
    assert not [c for c in answers if c.startswith("http_5")], f"5xx under overload: {answers}"
    refusals = {c for c in answers if c.startswith("http_")}
    typed = {"http_429:rate_limited.overloaded", "http_429:rate_limited.queue_timeout"}
    assert refusals <= typed, f"untyped refusals: {answers}"
    assert set(flood["reversal_codes"]) <= {"00"}, flood["reversal_codes"]
    codes = result.report["codes"]
    assert NO_ANSWER not in codes["authorisation"], codes["authorisation"]
    assert not [c for c in codes["authorisation"] if c.startswith("http_5")], codes["authorisation"]
    reversals = codes.get("reversal", {})
    assert not [c for c in reversals if c.startswith("http_")], f"a reversal was refused: {reversals}"
    assert result.differences == [], "\n".join(result.differences)
    assert result.report["run"]["ledger_checked"]
