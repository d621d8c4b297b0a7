"""Accounts' business metrics."""

from prometheus_client import Counter

NEGATIVE_BALANCES = Counter(
    "ledger_negative_balance_postings_total",
    "Postings that left a customer balance below zero (forced clearing beyond the balance)",
)
