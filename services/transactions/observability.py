"""The feed's business figures, counted in-band from the events transactions commits."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.events.envelope import Envelope
from shared.events.outbox import observe_events
from shared.observability import FEED_LAG, FEED_TRANSACTIONS


def observe(envelope: Envelope) -> None:
    data = envelope.data
    FEED_TRANSACTIONS.labels(str(data.get("change", "created"))).inc()
    # The feed's lag: from the moment the transaction last changed (the card or ledger event's time,
    # which the fold records as `updated`) to this commit.
    changed = (data.get("transaction") or {}).get("updated")
    if isinstance(changed, str) and changed:
        try:
            moment = datetime.fromisoformat(changed.replace("Z", "+00:00"))
        except ValueError:
            return
        FEED_LAG.labels(envelope.type).observe(max(0.0, (datetime.now(UTC) - moment).total_seconds()))


observe_events("transactions", observe)
