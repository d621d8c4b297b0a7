"""`bank up` (what `make run` runs) as a newcomer would use it: real processes, real ports."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import psutil
import pytest

from shared.config import SERVICES
from tests.support.bank import BankProcess


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_bank_up_runs_every_service_and_stops_cleanly(bank_env: dict[str, str]) -> None:
    started = time.monotonic()
    bank = BankProcess(bank_env)
    try:
        bank.wait_ready()
        cold = time.monotonic() - started
        with httpx.Client(timeout=5) as client:
            for name in SERVICES:
                url = bank_env[f"BANK_{name.upper()}_URL"]
                ready = client.get(f"{url}/readyz")
                assert ready.status_code == 200, (name, ready.text)
                checks = ready.json()["checks"]
                if name != "gateway":  # the gateway keeps no state: no database, no transport
                    assert checks["database"]["ok"] and checks["transport"]["transport"] == "pglog"
                else:  # "up" promises a working API: the gateway holds accounts' token keys
                    assert checks["identity"]["jwks_loaded"] == "yes", checks
                assert "http_requests_total" in client.get(f"{url}/metrics").text
            ops_auth = {"Authorization": "Bearer dev-ops-token"}  # GATEWAY_OPS_TOKEN's development default
            ops = client.get(f"{bank_env['BANK_GATEWAY_URL']}/ops/health", headers=ops_auth).json()
            assert ops["ok"] is True
            assert set(ops["services"]) == set(SERVICES) - {"gateway"}
            assert (
                "Bank operations" in client.get(f"{bank_env['BANK_GATEWAY_URL']}/ops", headers=ops_auth).text
            )
        rss = {
            child.cmdline()[-1]: child.memory_info().rss // 2**20
            for child in psutil.Process(bank.proc.pid).children()
            if child.cmdline()[-1].startswith("services.")
        }
        print(f"\nbank up (cold data dir): ready in {cold:.1f}s; idle RSS MiB per service: {rss}")
        assert set(rss) == {f"services.{n}" for n in SERVICES}

        # A service that crashes is started again, as an orchestrator would; the bank stays up.
        [victim] = [
            c for c in psutil.Process(bank.proc.pid).children() if c.cmdline()[-1] == "services.transactions"
        ]
        victim.kill()
        victim.wait(timeout=10)
        url = bank_env["BANK_TRANSACTIONS_URL"]
        give_up = time.monotonic() + 60
        while not _ready(url):
            assert time.monotonic() < give_up, bank.output()[-3000:]
            assert bank.proc.poll() is None, bank.output()[-3000:]
            time.sleep(0.2)
        assert "transactions stopped (exit code -9); restarting it" in bank.output()

        second = subprocess.run(
            [sys.executable, "-m", "bank.cli", "up"], env=bank_env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert "already running" in second.stdout
    finally:
        code = bank.stop()
    assert code == 0, bank.output()
    assert "stopped." in bank.output()
    for name in SERVICES:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{bank_env[f'BANK_{name.upper()}_URL']}/healthz", timeout=2)

    # A second run reuses the data folder (no initdb) and is ready again.
    started = time.monotonic()
    warm = BankProcess(bank_env)
    try:
        warm.wait_ready()
        print(f"bank up (warm data dir): ready in {time.monotonic() - started:.1f}s")
    finally:
        assert warm.stop() == 0, warm.output()
