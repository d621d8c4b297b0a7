"""The simulator on the ISO 8583 link (`bank sim … --wire iso8583`): the `day` scenario over pipelined
links, every link cut (by the network's side) with messages in flight, every 2 s for a while. What
went unanswered is repeated (0101, 0121, 0401) on the reopened links and gets the recorded answer;
the network's books and the bank then agree exactly, and the ledger verifies."""

from __future__ import annotations

from pathlib import Path

from bank.chaos import run_chaos
from simulator.loadgen import NO_ANSWER
from simulator.runner import RunConfig


async def test_links_cut_with_messages_in_flight_during_day(tmp_path: Path, work_dir: Path) -> None:
    cfg = RunConfig(scenario="day", rate=15, duration=16, seed=7, customers=20, live=False, wire="iso8583",
                    settle_seconds=90, results=tmp_path / "results")  # fmt: skip
    result = await run_chaos("link-cut", cfg, fault_at=3, fault_seconds=8, folder=work_dir)

    assert result.differences == [], "\n".join(result.differences)
    assert result.report["run"]["wire"] == "iso8583" and result.report["run"]["ledger_checked"]
    chaos, links = result.report["chaos"], result.report["links"]
    assert len(chaos["in_flight_at_each_cut"]) >= 3 and all(n > 0 for n in chaos["in_flight_at_each_cut"])
    assert links["cuts"] >= 3 and links["lost_in_flight"] > 0 and links["reopened"] >= 4 * links["cuts"]
    codes = result.report["codes"]["authorisation"]
    assert NO_ANSWER not in codes, f"an authorisation was never answered, repeats and all: {codes}"
    assert codes.get("00", 0) > 100, codes
    assert result.stats.resent > 0
