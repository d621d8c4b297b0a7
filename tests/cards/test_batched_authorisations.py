"""Bursts of 0100 authorisations through the real cards and accounts processes (decision 0030).

Cards gathers whatever arrives while a batch is in flight into the next batch, and places that batch's
holds with one call to accounts, which decides them in order in one transaction. Whatever the batching,
the network must see what it would see one message at a time: money for ten approves exactly ten, a
repeated message gets one answer and one hold, and every approval stands on its own active hold.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

from tests.accounts.conftest import Customer
from tests.cards.conftest import Bank, authorisation


async def approvals_with_holds(bank: Bank, nids: list[str]) -> list[dict[str, Any]]:
    """Each authorisation under these network ids with the hold it names (None when it names none)."""
    return await bank.rows(
        """
        SELECT a.network_transaction_id AS nid, a.status, a.response_code, a.decline_reason,
               a.account_id, a.amount, a.hold_id, a.held_amount,
               h.network_txn_id AS hold_nid, h.account_id AS hold_account, h.amount AS hold_amount,
               h.status AS hold_status
        FROM cards.authorisations a
        LEFT JOIN accounts.holds h ON h.network_txn_id = a.hold_id
        WHERE a.network_transaction_id = ANY(:nids)
        """,
        nids=nids,
    )


async def test_100_concurrent_authorisations_of_70_against_700_approve_exactly_10(bank: Bank) -> None:
    ada = await bank.customer(balance=700)
    card = await bank.issue(ada)
    messages = [authorisation(card, 70) for _ in range(100)]

    answers = await asyncio.gather(*(bank.authorise(m) for m in messages))

    assert Counter(a["response_code"] for a in answers) == {"00": 10, "51": 90}
    for message, answer in zip(messages, answers, strict=True):
        assert answer["network_transaction_id"] == message["network_transaction_id"]
        assert ("approval_code" in answer) == (answer["response_code"] == "00")
    assert await bank.money(ada) == (700, 700)
    approved = {
        m["network_transaction_id"]
        for m, a in zip(messages, answers, strict=True)
        if a["response_code"] == "00"
    }
    active = await bank.rows(
        "SELECT network_txn_id FROM accounts.holds WHERE account_id = :a AND status = 'active'",
        a=ada.account_id,
    )
    assert {r["network_txn_id"] for r in active} == approved
    events = await bank.events("card.authorisation.approved")
    assert len(events) == 10
    assert {e["data"]["network_transaction_id"] for e in events} == approved
    assert all(e["data"]["held_amount"] == 70 and e["subject"] == ada.account_id for e in events)
    assert len(await bank.events("card.authorisation.declined")) == 90
    rows = await bank.rows(
        "SELECT status, response_code FROM cards.authorisations WHERE card_id = :c", c=card["id"]
    )
    assert Counter((r["status"], r["response_code"]) for r in rows) == {
        ("approved", "00"): 10,
        ("declined", "51"): 90,
    }
    # They were decided in batches (the holds of one batch share their creation time), not one by one.
    batches = await bank.rows(
        "SELECT count(*) AS n FROM accounts.holds WHERE account_id = :a GROUP BY created", a=ada.account_id
    )
    assert sum(b["n"] for b in batches) == 100 and max(b["n"] for b in batches) > 1


async def test_concurrent_repeats_of_one_message_in_a_burst_get_one_answer_and_one_hold(bank: Bank) -> None:
    ada = await bank.customer(balance=100_000)
    card = await bank.issue(ada)
    repeated = authorisation(card, 2_500)
    nid = repeated["network_transaction_id"]
    clash = {**repeated, "amount": 2_600}  # another message under the same network id
    others = [authorisation(card, 100) for _ in range(40)]
    burst: list[dict[str, Any]] = others[:20] + [repeated] * 8 + [clash] * 4 + others[20:]
    random.Random(11).shuffle(burst)

    answers = await asyncio.gather(*(bank.authorise(m) for m in burst))

    for_repeated = [a for m, a in zip(burst, answers, strict=True) if m is repeated]
    for_clash = [a for m, a in zip(burst, answers, strict=True) if m is clash]
    # Whichever of the two was decided first is the message under that id; the other is a duplicate.
    winners, losers = (
        (for_repeated, for_clash) if for_repeated[0]["response_code"] == "00" else (for_clash, for_repeated)
    )
    amount = 2_500 if winners is for_repeated else 2_600
    assert all(a == winners[0] for a in winners)
    assert winners[0]["response_code"] == "00" and winners[0]["network_transaction_id"] == nid
    assert all(a["response_code"] == "94" for a in losers), losers
    assert [a["response_code"] for m, a in zip(burst, answers, strict=True) if m in others].count("00") == 40

    [hold] = await bank.rows("SELECT amount, status FROM accounts.holds WHERE network_txn_id = :n", n=nid)
    assert (hold["amount"], hold["status"]) == (amount, "active")
    [auth] = await bank.rows(
        "SELECT id, amount, status, hold_id FROM cards.authorisations WHERE network_transaction_id = :n",
        n=nid,
    )
    assert (auth["id"], auth["amount"], auth["status"], auth["hold_id"]) == (
        winners[0]["authorisation_id"],
        amount,
        "approved",
        nid,
    )
    events = [e for e in await bank.events() if e["data"]["network_transaction_id"] == nid]
    assert [e["type"] for e in events] == ["card.authorisation.approved"]
    assert await bank.money(ada) == (100_000, amount + 40 * 100)
    assert len(await bank.rows("SELECT 1 FROM accounts.holds WHERE account_id = :a", a=ada.account_id)) == 41


async def test_a_burst_over_several_cards_and_accounts_records_every_approval_with_its_hold(
    bank: Bank,
) -> None:
    balances = [700, 1_000, 250, 0, 5_000]
    customers = [await bank.customer(balance=b) for b in balances]
    cards = [(c, await bank.issue(c)) for c in customers for _ in range(2)]
    rng = random.Random(2026)
    owner: dict[str, Customer] = {}
    messages = []
    for _ in range(120):
        customer, card = rng.choice(cards)
        message = authorisation(card, rng.choice([1, 50, 70, 99, 120, 250, 400, 900]))
        owner[message["network_transaction_id"]] = customer
        messages.append(message)

    answers = await asyncio.gather(*(bank.authorise(m) for m in messages))

    codes = Counter(a["response_code"] for a in answers)
    assert set(codes) == {"00", "51"} and codes["00"] > 10 and codes["51"] > 10, codes
    nids = [m["network_transaction_id"] for m in messages]
    rows = {r["nid"]: r for r in await approvals_with_holds(bank, nids)}
    assert set(rows) == set(nids)
    approved_sum: dict[str, int] = defaultdict(int)
    for message, answer in zip(messages, answers, strict=True):
        row, account_id = (
            rows[message["network_transaction_id"]],
            owner[message["network_transaction_id"]].account_id,
        )
        assert row["response_code"] == answer["response_code"] and row["account_id"] == account_id
        if answer["response_code"] == "00":
            # Recorded as approved, on its own active hold, for its amount, on its card's account.
            assert row["status"] == "approved" and row["hold_id"] == row["nid"] == row["hold_nid"], row
            assert row["hold_status"] == "active" and row["hold_account"] == account_id, row
            assert row["hold_amount"] == row["held_amount"] == row["amount"] == message["amount"], row
            approved_sum[account_id] += message["amount"]
        else:
            assert row["status"] == "declined" and row["decline_reason"] == "INSUFFICIENT_FUNDS", row
            assert row["hold_id"] is None and row["held_amount"] == 0, row
            assert row["hold_status"] is None
    active = await bank.rows(
        "SELECT network_txn_id FROM accounts.holds WHERE status = 'active' AND network_txn_id = ANY(:n)",
        n=nids,
    )
    assert {r["network_txn_id"] for r in active} == {
        r["nid"] for r in rows.values() if r["status"] == "approved"
    }
    final_available = {}
    for customer, balance in zip(customers, balances, strict=True):
        assert await bank.money(customer) == (balance, approved_sum[customer.account_id])
        final_available[customer.account_id] = balance - approved_sum[customer.account_id]
    # Available money only fell during the burst: whatever was declined for want of money did not fit
    # even in what is left at the end (nothing was declined against money no hold took).
    for message, answer in zip(messages, answers, strict=True):
        if answer["response_code"] == "51":
            assert message["amount"] > final_available[owner[message["network_transaction_id"]].account_id]

    # Accounts' resolution of its provisional holds keeps every one an approval stands behind.
    assert await bank.resolve_holds() == codes["00"]
    held_after = await bank.rows(
        "SELECT count(*) AS n FROM accounts.holds WHERE status = 'active' AND network_txn_id = ANY(:n)",
        n=nids,
    )
    assert held_after[0]["n"] == codes["00"]
    assert await bank.rows("SELECT 1 FROM accounts.unconfirmed_holds") == []
    for customer, balance in zip(customers, balances, strict=True):
        assert await bank.money(customer) == (balance, approved_sum[customer.account_id])
