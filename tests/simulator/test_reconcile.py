"""A short `day` against a real bank (`bank up`), the customers' payments and pot moves included,
reconciles clean; a discrepancy made behind the network's (or the app's) back is reported, naming
the account (or the pot)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bank.cluster import ledger_problems
from simulator.merchants import catalogue
from simulator.reconcile import reconcile
from simulator.runner import RunConfig, run_scenario
from tests.support.bank import BankProcess


async def test_day_reconciles_and_an_injected_discrepancy_is_caught(
    sim_bank_env: dict[str, str], tmp_path: Path
) -> None:
    bank_env = sim_bank_env
    bank = BankProcess(bank_env)
    try:
        bank.wait_ready()
        gateway = bank_env["BANK_GATEWAY_URL"]
        database_url = f"postgresql://postgres@127.0.0.1:{bank_env['BANK_PG_PORT']}/bank"
        cfg = RunConfig(scenario="day", rate=10, duration=15, seed=11, customers=20, base_url=gateway,
                        signup_url=bank_env["BANK_ACCOUNTS_URL"], live=False,
                        results=tmp_path / "results")  # fmt: skip
        result = await run_scenario(cfg, bank_checks=lambda: ledger_problems(database_url))

        assert result.differences == [], "\n".join(result.differences)
        codes = result.report["codes"]["authorisation"]
        assert sum(codes.values()) == result.report["planned"]["authorisation"]
        assert result.books.auths, "the network kept books"
        for kind in ("payment", "pot_deposit", "pot_withdrawal"):
            outcomes = result.report["codes"][kind]
            assert outcomes.get("ok", 0) > 0 and set(outcomes) == {"ok"}, (kind, outcomes)
            assert sum(outcomes.values()) == result.report["planned"][kind], (kind, outcomes)
        moves = result.report["app_moves"]
        assert moves["payments"] == result.report["codes"]["payment"]["ok"] and moves["paid"] > 0, moves
        assert moves["pot_deposits"] > 0 and moves["pot_withdrawals"] > 0, moves
        assert result.books.pot_start, "the pots' opening balances were read"
        for name in ("report.json", "summary.md", "latency.png"):
            assert (tmp_path / "results" / name).stat().st_size > 0
        assert json.loads((tmp_path / "results" / "report.json").read_text())["reconciliation"]["clean"]

        # Behind the network's books: an approved authorisation it never recorded.
        victim = result.population.customers[0]
        merchant = catalogue()[0].message_json()
        message = {
            "mti": "0100", "pan": victim.pan, "expiry": victim.expiry, "processing_code": "000000",
            "amount": 1234, "currency": "GBP", "stan": "999999", "rrn": "INJECTED0001",
            "transmission_time": datetime.now(UTC).isoformat(), "network_transaction_id": "INJECTED-1",
            "merchant": merchant,
        }  # fmt: skip
        async with httpx.AsyncClient(timeout=15) as client:
            r = await client.post(f"{gateway}/network/authorisations", json=message,
                                  headers={"x-network-key": cfg.network_key})  # fmt: skip
        assert r.status_code == 200 and r.json()["response_code"] == "00", r.text

        differences = await reconcile(result.books, result.population.customers, gateway, settle_seconds=1)
        assert len(differences) == 1, differences
        assert victim.account_id in differences[0] and "-1234" in differences[0]

        # And the network's own books tampered with: also caught.
        result.books.start[1] += 500
        differences = await reconcile(result.books, result.population.customers, gateway, settle_seconds=1)
        assert len(differences) == 2
        assert any(result.population.customers[1].account_id in d and "-500" in d for d in differences)

        # Behind the app's back: the owner of a pot moves money into it with another client.
        card = next(c for c in result.books.pot_start if c not in (0, 1))  # 0 and 1 differ already
        owner = result.population.customers[card]
        async with httpx.AsyncClient(timeout=15) as client:
            r = await client.put(f"{gateway}/pots/{owner.pot_id}/deposit",
                                 data={"source_account_id": owner.account_id, "amount": "77",
                                       "dedupe_id": "behind-the-apps-back"},
                                 headers={"Authorization": f"Bearer {owner.token}"})  # fmt: skip
        assert r.status_code == 200, r.text
        differences = await reconcile(result.books, result.population.customers, gateway, settle_seconds=1)
        assert any(owner.pot_id in d and "+77" in d for d in differences), differences
        assert any(owner.account_id in d and "-77" in d and "available" in d for d in differences), (
            differences
        )
    finally:
        assert bank.stop() == 0, bank.output()
