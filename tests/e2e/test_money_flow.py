"""A customer's first minutes, against `bank up` processes: sign up, sign in, top up, read the balance.

Also proves the accounts process relays its outbox: the events reach the embedded log.
"""

from __future__ import annotations

import time

import httpx
import psycopg

from tests.support.bank import BankProcess


def test_sign_up_sign_in_top_up_and_see_the_events(bank_env: dict[str, str]) -> None:
    bank = BankProcess(bank_env)
    try:
        bank.wait_ready()
        accounts = bank_env["BANK_ACCOUNTS_URL"]
        with httpx.Client(base_url=accounts, timeout=10) as client:
            r = client.post(
                "/users",
                data={"email": "ada@example.com", "password": "correct horse", "name": "Ada Lovelace"},
            )
            assert r.status_code == 201, r.text
            account_id = r.json()["account"]["id"]

            r = client.post(
                "/oauth2/token",
                data={
                    "grant_type": "password",
                    "client_id": "oauthclient_mondo_app",
                    "username": "ada@example.com",
                    "password": "correct horse",
                },
            )
            assert r.status_code == 200, r.text
            auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
            assert client.get("/ping/whoami", headers=auth).json()["authenticated"] is True

            r = client.post(
                "/topup",
                data={"account_id": account_id, "amount": "4355", "currency": "GBP"},
                headers={**auth, "Idempotency-Key": "first-topup"},
            )
            assert r.status_code == 201, r.text
            balance = client.get("/balance", params={"account_id": account_id}, headers=auth).json()
            assert balance["balance"] == 4355

        # The accounts process's relay publishes to the embedded log without any prompting;
        # the log NOTIFYs on every append, so wait on that rather than on a clock.
        url = f"postgresql://postgres@127.0.0.1:{bank_env['BANK_PG_PORT']}/bank"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN events_log")
            count_sql = "SELECT count(*) FROM events.log WHERE key = %s"
            deadline = time.monotonic() + 30
            while (count := conn.execute(count_sql, (account_id,)).fetchone()[0]) < 2:  # type: ignore[index]
                assert time.monotonic() < deadline, f"{count} of 2 events reached events.log"
                for _ in conn.notifies(timeout=1, stop_after=1):
                    pass
        assert count == 2, "account.created and account.topup.completed, once each"
    finally:
        assert bank.stop() == 0, bank.output()
