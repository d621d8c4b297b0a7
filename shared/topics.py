"""The bank's event topics, each named once (docs/events.md has what travels on each).

A producer's events.py names its own topics from here; a consumer names the topics it reads from
here too, so no service imports another to learn a topic's name. What the events on a topic carry
is the producer's models, which consumers copy as far as they read them:
tests/contract/test_event_models.py checks that the copies agree.
"""

from __future__ import annotations

ACCOUNTS = "accounts.accounts"  # accounts: account.created, account.pot.created|deleted
LEDGER = "accounts.ledger"  # accounts: money moved (top-ups, holds, postings, pots, payments)
CARD_AUTHORISATIONS = "cards.authorisations"  # cards: authorisations, reversals, clearing
TRANSACTIONS_FEED = "transactions.feed"  # transactions: transaction.created|updated
WEBHOOK_ENDPOINTS = "webhooks.endpoints"  # webhooks: webhook.endpoint.disabled

ALL = (ACCOUNTS, LEDGER, CARD_AUTHORISATIONS, TRANSACTIONS_FEED, WEBHOOK_ENDPOINTS)
