"""A whole bank (`bank up` in its own process) for the ops page tests, and a headless Chromium.

The browser is Debian's `chromium` package (bank/infra/browser.py installs it when it is missing),
driven by Playwright with `executable_path`: Playwright never downloads a browser. Screenshots go
to `.data/artefacts/browser/` (git-ignored), or `$BANK_ARTEFACTS_DIR/browser/`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bank.infra.browser import ensure_chromium
from tests.support.bank import BankProcess, bank_env

OPS_TOKEN = "browser-test-ops-token"
NETWORK_KEY = "browser-test-network-key"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningBank:
    process: BankProcess
    env: dict[str, str]
    gateway: str
    card: dict[str, Any]
    http: httpx.Client

    @property
    def ops_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {OPS_TOKEN}"}

    def url_of(self, service: str) -> str:
        return self.env[f"BANK_{service.upper()}_URL"]

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.env['BANK_PG_PORT']}/bank"

    def authorise(self, amount: int = 1915) -> httpx.Response:
        """One 0100 through the gateway, as the card network sends it."""
        r = self.http.post(
            "/network/authorisations", json=message(self.card, amount), headers={"x-network-key": NETWORK_KEY}
        )
        assert r.status_code == 200, r.text
        return r

    def summary(self) -> dict[str, Any]:
        r = self.http.get("/ops/api/summary", headers=self.ops_headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def message(card: dict[str, Any], amount: int) -> dict[str, Any]:
    """An 0100 for `card` under a new network transaction id."""
    stamp = datetime.now(UTC)
    nid = "BRW" + uuid.uuid4().hex[:12].upper()
    return {
        "mti": "0100", "pan": card["pan"], "expiry": card["expiry"][3:] + card["expiry"][:2],
        "cvc": card["cvc"], "processing_code": "000000", "amount": amount, "currency": "GBP",
        "stan": f"{stamp.microsecond:06d}", "rrn": f"{stamp.microsecond:012d}",
        "transmission_time": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "network_transaction_id": nid,
        "merchant": {"id": "BB0001", "name": "BRIGHTBIRD ESPRESSO", "mcc": "5814", "city": "London",
                     "country": "GB", "postcode": "N1 3JD"},
    }  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture(scope="session")
def artefacts() -> Path:
    base = Path(os.environ.get("BANK_ARTEFACTS_DIR", ROOT / ".data" / "artefacts"))
    folder = base / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _customer_with_a_card(http: httpx.Client) -> dict[str, Any]:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    r = http.post("/users", data={"email": email, "password": "correct horse", "name": "Ada Lovelace"})
    assert r.status_code == 201, r.text
    account_id = r.json()["account"]["id"]
    r = http.post(
        "/oauth2/token",
        data={"grant_type": "password", "client_id": "oauthclient_mondo_app", "username": email,
              "password": "correct horse"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = http.post(
        "/topup",
        data={"account_id": account_id, "amount": "500000", "currency": "GBP"},
        headers={**auth, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 201, r.text
    r = http.post("/cards", data={"account_id": account_id}, headers=auth)
    assert r.status_code == 201, r.text
    card: dict[str, Any] = r.json()["card"]
    return card


@pytest.fixture(scope="module")
def ops_bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBank]:
    tmp = tmp_path_factory.mktemp("ops-bank")
    env = bank_env(
        tmp,
        GATEWAY_OPS_TOKEN=OPS_TOKEN, GATEWAY_NETWORK_API_KEY=NETWORK_KEY,
        BANK_TRACING="true", BANK_TRACE_SAMPLE_RATIO="1.0",
        # The ops page reads its totals and money at risk every second; a stray hold or a missing feed
        # item is at risk after 4 s; accounts resolves provisional holds 12 s old, checking every second
        # (a stranded hold shows red for ~8 s, then goes).
        GATEWAY_OPS_REFRESH_SECONDS="1", GATEWAY_OPS_GRACE_SECONDS="4",
        ACCOUNTS_UNCONFIRMED_HOLD_SECONDS="12", ACCOUNTS_UNCONFIRMED_JOB_SECONDS="1",
        # One app request in flight at most past the gateway (decision 0036's app limit): two at once make
        # a shed the sheds panel must count (test_ops_page). The other tests send app requests one by one.
        GATEWAY_APP_IN_FLIGHT_LIMIT="1",
        # The test's page and its own client poll /ops from one address: more room than a person needs.
        GATEWAY_RATE_LIMITS=json.dumps({
            "default": {"rate": 20, "burst": 100}, "auth": {"rate": 2, "burst": 20},
            "network": {"rate": 2000, "burst": 4000}, "ops": {"rate": 50, "burst": 200},
        }),
    )  # fmt: skip
    process = BankProcess(env)
    try:
        process.wait_ready(timeout=180)
        with httpx.Client(base_url=env["BANK_GATEWAY_URL"], timeout=15) as http:
            yield RunningBank(process, env, env["BANK_GATEWAY_URL"], _customer_with_a_card(http), http)
    finally:
        process.stop()
