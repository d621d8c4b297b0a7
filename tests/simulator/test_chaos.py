"""One failure scenario in CI: accounts killed (SIGKILL) for a few seconds during a low-rate `day`.

Authorisations are answered (91) rather than left hanging, and once accounts is back the network's
books and the bank agree exactly, and the ledger verifies (no stray holds)."""

from __future__ import annotations

from pathlib import Path

from simulator.chaos import run_chaos
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
