"""The checker is not vacuous: on a sound ledger it finds nothing; break each invariant by hand and it
names exactly that invariant."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from bank.checker import check_bank
from shared.config import BankSettings
from shared.db import Database

USER = "user_checker"


async def _customer(db: Database, account: str, balance: int, held: int = 0) -> None:
    async with db.transaction() as s:
        await s.execute(
            text(
                "INSERT INTO accounts.users (id, email, name, password_hash) VALUES (:u, :e, 'C', 'x') "
                "ON CONFLICT DO NOTHING"
            ),
            {"u": USER, "e": "checker@example.com"},
        )
        await s.execute(
            text(
                "INSERT INTO accounts.accounts (id, kind, user_id, description, type, currency, "
                "balance, held) "
                "VALUES (:a, 'customer', :u, 'test', 'uk_prepaid', 'GBP', :b, :h)"
            ),
            {"a": account, "u": USER, "b": balance, "h": held},
        )


async def _entry(db: Database, entry: str, kind: str, lines: list[tuple[str, int]]) -> None:
    async with db.transaction() as s:
        await s.execute(
            text(
                "INSERT INTO accounts.journal_entries (id, kind, account_id, reference) "
                "VALUES (:e, :k, :a, :e)"
            ),
            {"e": entry, "k": kind, "a": lines[0][0]},
        )
        for account, amount in lines:
            await s.execute(
                text(
                    "INSERT INTO accounts.postings (entry_id, account_id, amount, currency) "
                    "VALUES (:e, :a, :m, 'GBP')"
                ),
                {"e": entry, "a": account, "m": amount},
            )


async def _violated(settings: BankSettings) -> set[str]:
    report = await check_bank(settings.database_url)
    return {name for name, n in report.counts.items() if n}


async def test_checker_names_each_broken_invariant(db: Database, settings: BankSettings) -> None:
    funding = "int_topup_funding_gbp"
    await _customer(db, "acc_ok", 1000)
    await _entry(db, "je_topup", "topup", [("acc_ok", 1000), (funding, -1000)])
    assert await _violated(settings) == set()

    # The database itself refuses an unbalanced entry (a deferred constraint trigger)...
    with pytest.raises(IntegrityError):
        await _entry(db, "je_bad", "topup", [("acc_ok", 5), (funding, -4)])
    # ...so money appears only in a balance column that no posting explains.
    async with db.transaction() as s:
        await s.execute(text("UPDATE accounts.accounts SET balance = 1005 WHERE id = 'acc_ok'"))
    assert await _violated(settings) == {"balance_is_postings"}
    async with db.transaction() as s:
        await s.execute(text("UPDATE accounts.accounts SET balance = 1000 WHERE id = 'acc_ok'"))
    assert await _violated(settings) == set()

    # Negative with no forced clearing; then a forced clearing that explains it.
    await _customer(db, "acc_neg", -300)
    await _entry(db, "je_neg", "card_capture", [("acc_neg", -300), ("int_card_scheme_settlement_gbp", 300)])
    assert await _violated(settings) == {"no_negative_balance"}
    async with db.transaction() as s:
        await s.execute(
            text("UPDATE accounts.journal_entries SET kind = 'card_force_debit' WHERE id = 'je_neg'")
        )
    assert await _violated(settings) == set()

    # A hold nobody's authorisation holds, and one past its expiry.
    async with db.transaction() as s:
        await s.execute(text("UPDATE accounts.accounts SET held = 200 WHERE id = 'acc_ok'"))
        await s.execute(
            text(
                "INSERT INTO accounts.holds (id, account_id, network_txn_id, amount, currency, status, "
                "expires_at) "
                "VALUES ('hold_x', 'acc_ok', 'NID1', 200, 'GBP', 'active', now() - interval '1 day')"
            )
        )
    assert await _violated(settings) == {"no_stray_holds", "holds_accounted"}


async def test_checker_finds_a_payment_or_pot_move_that_is_not_between_customers(
    db: Database, settings: BankSettings
) -> None:
    """transfers_conserve (decision 0037): a payment between two customers, a pot move within one."""
    funding = "int_topup_funding_gbp"
    await _customer(db, "acc_a", 1000)
    await _entry(db, "je_topup", "topup", [("acc_a", 1000), (funding, -1000)])
    async with db.transaction() as s:
        await s.execute(
            text(
                "INSERT INTO accounts.users (id, email, name, password_hash) "
                "VALUES ('user_b', 'b@example.com', 'B', 'x')"
            )
        )
        await s.execute(
            text(
                "INSERT INTO accounts.accounts (id, kind, user_id, description, type, currency) VALUES "
                "('acc_b', 'customer', 'user_b', 'b', 'uk_prepaid', 'GBP'), "
                "('pot_a', 'pot', :u, 'Jar', 'uk_retail_pot', 'GBP')"
            ),
            {"u": USER},
        )
        await s.execute(
            text(
                "INSERT INTO accounts.pots (id, current_account_id, user_id, name, style) "
                "VALUES ('pot_a', 'acc_a', :u, 'Jar', 'beach_ball')"
            ),
            {"u": USER},
        )
        await s.execute(text("UPDATE accounts.accounts SET balance = 700 WHERE id = 'acc_a'"))
        await s.execute(text("UPDATE accounts.accounts SET balance = 200 WHERE id = 'acc_b'"))
        await s.execute(text("UPDATE accounts.accounts SET balance = 100 WHERE id = 'pot_a'"))
    await _entry(db, "je_pay", "p2p_payment", [("acc_a", -200), ("acc_b", 200)])
    await _entry(db, "je_pot", "pot_deposit", [("acc_a", -100), ("pot_a", 100)])
    report = await check_bank(settings.database_url)
    assert "transfers_conserve" in report.checked and report.figures["transfers"] == 2
    assert await _violated(settings) == set()

    await _entry(db, "je_leak", "p2p_payment", [("acc_b", -50), (funding, 50)])
    async with db.transaction() as s:
        await s.execute(text("UPDATE accounts.accounts SET balance = 150 WHERE id = 'acc_b'"))
    await _entry(db, "je_foreign", "pot_withdrawal", [("pot_a", -10), ("acc_b", 10)])
    async with db.transaction() as s:
        await s.execute(text("UPDATE accounts.accounts SET balance = 90 WHERE id = 'pot_a'"))
        await s.execute(text("UPDATE accounts.accounts SET balance = 160 WHERE id = 'acc_b'"))
    report = await check_bank(settings.database_url)
    assert {n for n, c in report.counts.items() if c} == {"transfers_conserve"}
    assert report.counts["transfers_conserve"] == 2, report.violations
